"""Output files that stream to disk and know where each record lands (file, line, byte offset), so that
facts and defects can name their exact location. Ground truth goes to JSON Lines files.

With `discard=True` nothing is written: every file is a `Discard` that only counts its bytes — the same
generation, formatting and encoding work, for runs larger than the disk (bench/simulate.py --discard)."""
from __future__ import annotations

from pathlib import Path

import orjson

QUARANTINE = {"malformed_hl7", "bad_json", "truncated_file", "wrong_encoding", "missing_mandatory"}


class Discard:
    """A write-only file that keeps nothing and counts the bytes written to it."""

    def __init__(self, owner: "Truth"):
        self.owner = owner

    def write(self, b: bytes) -> int:
        self.owner.discarded += len(b)
        return len(b)

    def close(self) -> None:
        pass


class Truth:
    """DIR/ground_truth/*.jsonl writers and the run summary; opens every output file of a run."""

    def __init__(self, out: Path, discard: bool = False):
        self.out = out
        self.discard = discard
        self.discarded = 0  # bytes counted by Discard files
        d = out / "ground_truth"
        if not discard:
            d.mkdir(parents=True, exist_ok=True)
        self.files = {n: self.open(d / f"{n}.jsonl") for n in
                      ("identities", "persons", "facts", "defects", "note_mentions", "corrections", "stays")}
        self.codes: dict = {}
        self.defects_by_class: dict[str, int] = {}
        self.n_defects = 0
        self.n_facts = 0

    def open(self, path: Path):
        """A binary file for writing, or a Discard in a discard run."""
        return Discard(self) if self.discard else open(path, "wb", buffering=1 << 16)

    def write_file(self, path: Path, data: bytes) -> None:
        f = self.open(path)
        f.write(data)
        f.close()

    def row(self, name: str, obj: dict) -> None:
        self.files[name].write(orjson.dumps(obj) + b"\n")

    def defect(self, cls: str, file: str, line, byte_offset, message_id, field, detail: str) -> None:
        self.n_defects += 1
        self.defects_by_class[cls] = self.defects_by_class.get(cls, 0) + 1
        self.files["defects"].write(orjson.dumps({
            "defect_id": f"D{self.n_defects:08d}", "class": cls, "file": file, "line": line,
            "byte_offset": byte_offset, "message_id": message_id, "field": field, "detail": detail}) + b"\n")

    def code(self, hospital, system, code_system, code, display, kind, vocabulary_id, concept_code, concept_id):
        key = (hospital, system, code_system, code)
        if key not in self.codes:
            self.codes[key] = {"hospital": hospital, "system": system, "code_system": code_system, "code": code,
                               "display": display, "kind": kind, "vocabulary_id": vocabulary_id,
                               "concept_code": concept_code, "concept_id": concept_id}

    def close(self) -> None:
        self.write_file(self.out / "ground_truth" / "codes.jsonl",
                        b"".join(orjson.dumps(self.codes[key]) + b"\n" for key in sorted(self.codes)))
        for f in self.files.values():
            f.close()


class Record:
    """One message / resource / row waiting to be written: its bytes, the facts it carries and the defects
    placed in it: (class, line offset within the record or None, field, detail, message id or None for the
    record's own)."""
    __slots__ = ("data", "message_id", "facts", "defects", "lines", "quarantined")

    def __init__(self, data: bytes, message_id, facts=None, defects=None, lines: int = 1):
        self.data = data
        self.message_id = message_id
        self.facts = facts or []
        self.defects = defects or []
        self.lines = lines
        self.quarantined = bool(defects) and any(d[0] in QUARANTINE for d in defects)


class Sink:
    """A sequence of files in one folder, rotated every `per_file` records. Keeps the last record pending so
    that a file can be truncated in its last record when it is closed."""

    def __init__(self, truth: Truth, out: Path, folder: str, hospital: str, system: str, pattern: str,
                 per_file: int, header: bytes = b"", footer=None, newline_counts=b"\n", truncate=None):
        self.truth, self.out, self.folder = truth, out, folder
        self.hospital, self.system = hospital, system
        self.pattern, self.per_file = pattern, per_file
        self.header, self.footer = header, footer
        self.nl = newline_counts
        self.truncate = truncate  # (random.Random, chance): whether a new file will end truncated
        if not truth.discard:
            (out / folder).mkdir(parents=True, exist_ok=True)
        self.f = None
        self.seq = 0
        self.files = 0
        self.records = 0
        self.pending: Record | None = None
        self.truncate_next = False  # set by the writer: truncate the current file in its last record

    def _open(self) -> None:
        self.seq += 1
        self.files += 1
        self.rel = f"{self.folder}/{self.pattern.format(self.seq)}"
        self.f = self.truth.open(self.out / self.rel)
        # the end of every fact line from this file: its "source" object up to the message id
        src = orjson.dumps({"hospital": self.hospital, "system": self.system, "file": self.rel, "message_id": 0})
        self.src = b',"source":' + src[:-2]
        self.offset = 0
        self.line = 1
        self.count = 0
        self.truncate_next = bool(self.truncate) and self.truncate[0].random() < self.truncate[1]
        if self.header:
            self._raw(self.header if isinstance(self.header, bytes) else self.header(self))

    def _raw(self, b: bytes, lines: int | None = None) -> None:
        self.f.write(b)
        self.offset += len(b)
        if self.nl is not None:
            self.line += b.count(self.nl) if lines is None else lines

    def add(self, rec: Record) -> None:
        pend = self.pending
        if pend is not None:
            if pend.defects:
                self._flush(pend)
            else:  # the common case of _flush, inline
                data = pend.data
                self.f.write(data)
                self.offset += len(data)
                if self.nl is not None:
                    self.line += pend.lines
                if pend.facts:
                    self._facts(pend)
        if self.f is None:
            self._open()
        self.pending = rec
        self.count += 1
        self.records += 1
        if self.count >= self.per_file:
            self.close_file()

    def _flush(self, rec: Record, cut: int | None = None) -> None:
        if cut is None and not rec.defects:  # the common case
            self._raw(rec.data, rec.lines)
            if rec.facts:
                self._facts(rec)
            return
        t = self.truth
        start_line, start_off = self.line, self.offset
        lines = self.nl is not None
        for cls, dline, field, detail, mid in rec.defects:
            t.defect(cls, self.rel, start_line + (dline or 0) if lines else None, start_off,
                     mid or rec.message_id, field, detail)
        if cut is not None:
            self._raw(rec.data[:cut])
            t.defect("truncated_file", self.rel, start_line if lines else None, start_off + cut, rec.message_id, None,
                     f"file ends {len(rec.data) - cut} bytes early, inside this record")
            return
        self._raw(rec.data, None if rec.quarantined else rec.lines)
        if not rec.quarantined and rec.facts:
            self._facts(rec)

    def _facts(self, rec: Record) -> None:
        """The record's facts to facts.jsonl, each with its source (message ids are the
        simulator's own ASCII ids, so they are written without JSON escaping)."""
        src, rmid, dumps = self.src, rec.message_id, orjson.dumps
        tail = b"null}}\n" if rmid is None else b'"%s"}}\n' % rmid.encode()
        out = []
        for fact in rec.facts:
            mid = fact.pop("_mid", rmid)
            out += (dumps(fact)[:-1], src, tail if mid == rmid else b'"%s"}}\n' % mid.encode())
        self.truth.files["facts"].write(b"".join(out))
        self.truth.n_facts += len(rec.facts)

    def close_file(self, final: bool = False) -> None:
        if self.f is None:
            return
        rec, self.pending = self.pending, None
        cut = None
        if rec is not None:
            if self.truncate_next and not rec.defects and len(rec.data) > 40:
                cut = self.cut_point(rec.data)
            self._flush(rec, cut)
        if cut is None and self.footer:
            self._raw(self.footer(self))
        self.f.close()
        self.f = None

    @staticmethod
    def cut_point(data: bytes) -> int:
        # somewhere in the second half, never on a record/segment end
        cut = len(data) * 2 // 3
        while cut < len(data) - 2 and data[cut:cut + 1] in (b"\r", b"\n"):
            cut += 1
        return cut
