"""HL7 v2: a tolerant, fast parser of our own, staging rows per table, and ACKs.

- `split(data)` cuts a file or stream into messages (`RawMessage`): UTF-8 BOM, CR / LF / CRLF segment ends,
  batch envelopes (FHS/BHS/BTS/FTS) stripped; garbage between messages comes out as a RawMessage of its own
  (so it fails parsing and is quarantined, never dropped); a batch file that ends without its BTS/FTS trailer,
  or a CR-terminated file whose last segment has no terminator, marks its last message with `.error`
  ("truncated?") — the caller quarantines it.
- `parse(data)` reads the encoding characters from MSH-1/MSH-2 and the character set from MSH-18 (UNICODE
  UTF-8, 8859/n, GB 18030, …), decodes the message bytes with it and splits segments. Fields are split only
  when asked for (`Segment.fields`), which is what makes it fast. Unknown and Z segments are kept. What cannot
  be parsed raises `HL7Error(reason, field, control_id, line)`.
- `stage(msg)` turns a message into rows per staging table (`STAGING_SCHEMAS`, tables `stg_hl7_*`); every row
  carries `control_id`, `message_type`, `event_time` and `segment_line` (the segment's line in its message).
  Columns holding names, ID numbers, phones, addresses or birth dates carry the Arrow field metadata
  `{b"identifying": b"true"}`; free text that may contain them carries `{b"free_text": b"true"}`.
  Timestamps are kept as the wall-clock time written in the message (a `+hhmm` offset is dropped).
  HL7's explicit null `""` (the receiver is to delete the value) stages as empty; `stg_hl7_patient.removed` lists
  the PID fields sent so (`PID-13 PID-29`), for the vault and the CDM's DEATH to take the value away.
  Values that are present but unreadable (a date `20241399`, a number `abc` in an NM field) stage as null with
  a note in the row's `notes` column; a missing mandatory field raises `HL7Error` naming the field.
- `ack(msg_or_raw, code, text)` builds the ACK (MSA, and ERR for AE/AR) in the message's own character set.
"""
from __future__ import annotations

import codecs
import datetime as dt
import math
import re
import uuid
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

BOM = b"\xef\xbb\xbf"
VT, FS = b"\x0b", b"\x1c"          # MLLP's start and end blocks


class HL7Error(ValueError):
    """A message (or part of one) that cannot be parsed or staged: what, where and, when known, which message."""

    def __init__(self, reason: str, field: str | None = None, control_id: str | None = None,
                 line: int | None = None):
        self.reason, self.field, self.control_id, self.line = reason, field, control_id, line
        super().__init__(reason)

    def __str__(self) -> str:
        where = [f"field {self.field}" if self.field else "", f"segment line {self.line}" if self.line else "",
                 f"message {self.control_id}" if self.control_id else ""]
        where = ", ".join(w for w in where if w)
        return f"{self.reason} ({where})" if where else self.reason


@dataclass(frozen=True)
class RawMessage:
    offset: int          # byte offset of the message (or garbage) in the data given to split()
    line: int            # 1-based line of its first byte (CR, LF and CRLF each end one line)
    data: bytes
    error: str | None = None   # set when the framing itself is suspect (e.g. a truncated batch file)


# -- splitting files into messages -------------------------------------------------------------------------

_START = re.compile(rb"(?:^|(?<=[\r\n]))\x0b?(MSH|FHS|BHS|BTS|FTS)(?![A-Za-z0-9\r\n])")
_BLANK = b" \t\r\n\x0b\x1c\x1a\x00"


def _lines(data: bytes, start: int, end: int) -> int:
    return data.count(b"\r", start, end) + data.count(b"\n", start, end) - data.count(b"\r\n", start, end)


def split(data: bytes) -> Iterator[RawMessage]:
    """The messages in a file or stream, in order, with their byte offset and line."""
    base = 3 if data.startswith(BOM) else 0
    pos = {"line": 1, "at": base}     # line number at byte position `at` (lines are counted incrementally)

    def piece(start: int, end: int, error: str | None = None) -> RawMessage | None:
        chunk = data[start:end]
        lead = len(chunk) - len(chunk.lstrip(_BLANK))
        body = chunk[lead:].rstrip(_BLANK)
        if not body:
            return None
        pos["line"] += _lines(data, pos["at"], start + lead)
        pos["at"] = start + lead
        return RawMessage(start + lead, pos["line"], body, error)

    starts = [(m.start(1), m.group(1)) for m in _START.finditer(data, base)]
    bounds = starts + [(len(data), b"")]
    garbage = piece(base, bounds[0][0])
    if garbage is not None:
        yield garbage
    pending: RawMessage | None = None
    open_file = open_batch = False
    # A message after a start block (0x0B) whose end block (0x1C) never comes was cut off: in a stream that ends
    # its frames, or alone (a frame the listener landed as far as it was read). Files of start blocks only pass.
    framed = FS in data or sum(k == b"MSH" for _, k in starts) == 1
    for (start, kind), (end, _) in zip(starts, bounds[1:]):
        if kind == b"MSH":
            cut = framed and data[start - 1:start] == VT and data.find(FS, start, end) < 0
            m = piece(start, end, "the MLLP frame has no end block (0x1C): cut off?" if cut else None)
            if pending is not None:
                yield pending
            pending = m
            continue
        # an envelope segment: its own line is dropped; anything on the lines after it is garbage
        eol = end
        for sep in (b"\r", b"\n"):
            i = data.find(sep, start, end)
            if 0 <= i < eol:
                eol = i
        if kind == b"FHS":
            open_file = True
        elif kind == b"BHS":
            open_batch = True
        elif kind == b"BTS":
            open_batch = False
        else:
            open_file = open_batch = False
        g = piece(eol, end)
        if g is not None:
            if pending is not None:
                yield pending
                pending = None
            yield g
    if pending is not None:
        error = pending.error
        if not error and (open_file or open_batch):
            error = "the file ends inside a batch (no BTS/FTS trailer): truncated?"
        elif not error and b"\n" not in data and data.count(b"\r") > 1 and not data.rstrip(b"\x1c\x1a\x00 \t").endswith(b"\r"):
            error = "the file ends in the middle of a segment (no final segment terminator): truncated?"
        yield RawMessage(pending.offset, pending.line, pending.data, error)


# -- character sets -----------------------------------------------------------------------------------------

# HL7 table 0211 (and names seen in the wild) -> Python codec
CHARSETS = {
    "ASCII": "utf-8", "ISO IR6": "utf-8", "UNICODE": "utf-8", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
    "UTF8": "utf-8", "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(1, 16) if n != 12},
    "ISO IR100": "iso8859-1", "ISO IR101": "iso8859-2", "ISO IR144": "iso8859-5", "ISO IR127": "iso8859-6",
    "ISO IR126": "iso8859-7", "ISO IR138": "iso8859-8", "ISO IR148": "iso8859-9",
    "GB 18030-2000": "gb18030", "GB 18030-2005": "gb18030", "GB 18030": "gb18030", "GB18030": "gb18030",
    "GBK": "gbk", "GB2312": "gb2312", "GB 2312": "gb2312",
    "KS X 1001": "euc_kr", "BIG-5": "big5", "BIG5": "big5", "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2",
}


def codec_for(name: str, default: str = "utf-8") -> str:
    key = " ".join(name.strip().upper().split())
    if not key:
        return default
    if key in CHARSETS:
        return CHARSETS[key]
    try:
        info = codecs.lookup(name.strip())
        if getattr(info, "_is_text_encoding", True):
            return info.name
    except (LookupError, ValueError):
        pass
    raise HL7Error(f"unknown character set {name.strip()!r} in MSH-18; use an HL7 table 0211 name "
                   f"such as 'UNICODE UTF-8', '8859/1' or 'GB 18030-2000'", field="MSH-18")


# -- messages and segments ------------------------------------------------------------------------------------

class Segment:
    """One segment. `fields[n]` is field n as raw text (for MSH, fields[1] is the field separator, so MSH-n is
    fields[n] too). `get(n, c, s, r)` returns one value with escapes resolved."""

    __slots__ = ("name", "raw", "line", "msg", "_f")

    def __init__(self, raw: str, line: int, msg: "Message"):
        self.name, self.raw, self.line, self.msg, self._f = raw[:3], raw, line, msg, None

    @property
    def fields(self) -> list[str]:
        if self._f is None:
            f = self.raw.split(self.msg.delims[0])
            if self.name == "MSH":
                f.insert(1, self.msg.delims[0])
            self._f = f
        return self._f

    def field(self, n: int) -> str:
        f = self.fields
        return f[n] if n < len(f) else ""

    __getitem__ = field

    def reps(self, n: int) -> list[str]:
        """The repetitions of field n (raw)."""
        v = self.field(n)
        rs = self.msg.delims[2]
        if not v:
            return []
        return v.split(rs) if rs and rs in v and not (self.name == "MSH" and n <= 2) else [v]

    def get(self, n: int, c: int | None = None, s: int | None = None, r: int = 1) -> str:
        v = self.field(n)
        if not v or (self.name == "MSH" and n <= 2):
            return v
        d = self.msg.delims
        if d[2] and d[2] in v:
            reps = v.split(d[2])
            v = reps[r - 1] if r <= len(reps) else ""
        elif r > 1:
            return ""
        if c is not None:
            if d[1] in v:
                parts = v.split(d[1])
                v = parts[c - 1] if c <= len(parts) else ""
            elif c > 1:
                return ""
            if s is not None and d[4]:
                if d[4] in v:
                    parts = v.split(d[4])
                    v = parts[s - 1] if s <= len(parts) else ""
                elif s > 1:
                    return ""
        return self.msg.unescape(v) if d[3] and d[3] in v else v

    def __repr__(self) -> str:
        return f"Segment({self.raw[:60]!r}, line={self.line})"


_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?[-.](\d+)(?:\((\d+)\))?(?:[.-](\d+))?(?:[.-](\d+))?$")


class Message:
    """A parsed message. `segments` are split into fields only when used."""

    __slots__ = ("text", "delims", "charset", "codec", "control_id", "type", "trigger", "structure", "version",
                 "_raw", "_segs")

    def __init__(self, text, delims, charset, codec, header, raw):
        self.text, self.delims, self.charset, self.codec = text, delims, charset, codec
        self._raw = raw            # [(line, segment text)]
        self._segs: list[Segment] | None = None
        cs = delims[1]
        mt = header[8].split(cs) if len(header) > 8 else [""]
        self.type = f"{mt[0]}^{mt[1]}" if len(mt) > 1 and mt[1] else mt[0]
        self.trigger = mt[1] if len(mt) > 1 else ""
        self.structure = mt[2] if len(mt) > 2 else ""
        self.control_id = header[9].strip() if len(header) > 9 else ""
        self.version = header[11].split(cs)[0].strip() if len(header) > 11 else ""

    @property
    def segments(self) -> list[Segment]:
        if self._segs is None:
            self._segs = [Segment(s, n, self) for n, s in self._raw]
        return self._segs

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def segment(self, name: str) -> Segment | None:
        """The first segment with this name, or None."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.name == name]

    def get(self, path: str) -> str:
        """One value by path: "PID-3.1", "PID-5.1.2" (subcomponent), "PID-3(2).1" (2nd repetition),
        "OBX[3]-5" (3rd OBX). "" when absent."""
        m = _PATH.match(path.strip())
        if not m:
            raise ValueError(f"not an HL7 field path: {path!r} (expected e.g. PID-3.1 or OBX[2]-5)")
        name, occ, f, r, c, s = m.groups()
        segs = self.all(name)
        i = int(occ or 1) - 1
        if i >= len(segs):
            return ""
        return segs[i].get(int(f), int(c) if c else None, int(s) if s else None, int(r or 1))

    def unescape(self, v: str) -> str:
        return unescape(v, self.delims, self.codec)

    def __repr__(self) -> str:
        return f"Message({self.type!r}, control_id={self.control_id!r}, version={self.version!r}, " \
               f"segments={len(self._raw)})"


def _delimiter(ch: str) -> bool:
    """A separator or encoding character: printable ASCII, no letter or digit (an ACK echoes them: they must
    read the same in any character set)."""
    return "!" <= ch <= "~" and not ch.isalnum()


def _valid_encoding(enc: str) -> bool:
    """MSH-2 holds encoding characters: at most 6 (doubled ones are tolerated)."""
    return bool(enc) and len(enc) <= 6 and all(_delimiter(ch) for ch in enc)


def _delims(fs: str, enc: str) -> tuple[str, str, str, str, str, str]:
    """(field, component, repetition, escape, subcomponent, truncation) from MSH-1 and MSH-2."""
    seen = []
    for ch in enc:            # tolerate doubled characters such as `^~\\&`
        if ch not in seen:
            seen.append(ch)
    got = seen + [""] * (5 - len(seen))
    if not got[0]:
        got[0] = "^"
    return (fs, got[0], got[1], got[2], got[3], got[4])


TWO_BYTE = {"gbk", "gb18030", "gb2312", "big5", "euc_kr"}   # codecs whose second bytes include ASCII punctuation


def _charset_field(fields: list[str], delims) -> str:
    """MSH-18's first character set, from the header split on the field separator (MSH-n is fields[n - 1])."""
    charset = fields[17] if len(fields) > 17 else ""
    if delims[2] and delims[2] in charset:
        charset = charset.split(delims[2])[0]
    return charset.split(delims[1])[0].strip()


def _two_byte_header(head: bytes, fs: str) -> list[str] | None:
    """The header split on the field separator a character at a time as in a two-byte set (a byte from 0x81 starts
    a character of two bytes, of four in GB 18030 when the second is a digit); None when it holds no such byte."""
    if max(head, default=0) < 0x81:
        return None
    sep, fields, cur, i = ord(fs), [], bytearray(), 0
    while i < len(head):
        c = head[i]
        if c >= 0x81:
            n = 4 if i + 3 < len(head) and 0x30 <= head[i + 1] <= 0x39 else 2
            cur += head[i:i + n]
            i += n
            continue
        if c == sep:
            fields.append(cur.decode("latin-1"))
            cur = bytearray()
        else:
            cur.append(c)
        i += 1
    return fields + [cur.decode("latin-1")]


def _two_byte_reading(head: bytes, fs: str, delims) -> tuple[list[str], str, str] | None:
    """The header read a character at a time (`_two_byte_header`) when, so read, its MSH-18 names a two-byte set:
    (fields, MSH-18, codec) — the header is then of that set, or is wrong in it; else None."""
    again = _two_byte_header(head, fs)
    charset = _charset_field(again, delims) if again else ""
    try:
        codec = codec_for(charset) if charset else None
    except HL7Error:
        return None
    return (again, charset, codec) if codec in TWO_BYTE else None


def parse(data: bytes | str, default_charset: str = "utf-8") -> Message:
    """Parse one message. `default_charset` is used when MSH-18 is empty."""
    if isinstance(data, str):
        text, codec = data.lstrip("\ufeff"), None
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text, codec = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as e:
            raise HL7Error(f"bytes at offset {e.start} are not valid UTF-16 (the data starts with a UTF-16 "
                           f"byte order mark)", field="MSH-18") from None
    else:
        text, codec = None, None
    b = data if text is None else None
    if b is not None:
        if b.startswith(BOM):
            b = b[3:]
        b = b.strip(_BLANK)
        head_end = len(b)
        for sep in (b"\r", b"\n"):
            i = b.find(sep, 0, head_end)
            if i >= 0:
                head_end = i
        head = b[:head_end].decode("latin-1")
    else:
        text = text.strip(" \t\r\n\x0b\x1c\x1a\x00")
        head = re.split(r"[\r\n]", text, maxsplit=1)[0]
    if not head.startswith("MSH"):
        raise HL7Error(f"the message does not start with an MSH segment (starts with {head[:20]!r})", field="MSH")
    if len(head) < 5:
        raise HL7Error("the MSH segment is too short to hold its separator and encoding characters", field="MSH-2")
    fs = head[3]
    if not _delimiter(fs):
        raise HL7Error(f"MSH-1 field separator {fs!r} is not a valid separator", field="MSH-1")
    hf = head.split(fs)
    enc = hf[1]
    if not _valid_encoding(enc):
        raise HL7Error(f"MSH-2 encoding characters {enc[:10]!r} are not valid (expected e.g. ^~\\&)", field="MSH-2")
    delims = _delims(fs, enc)
    charset = _charset_field(hf, delims)
    control_id = hf[9].strip() if len(hf) > 9 else ""
    if b is not None:
        try:
            codec = codec_for(charset, default_charset)
            text = b.decode(codec)
        except (HL7Error, UnicodeDecodeError) as e:
            # The header read byte by byte: in a two-byte set (GBK, GB 18030, Big5) the second byte of a character
            # in MSH-3..17 can be the field separator, which shifts MSH-18. Read it again a character at a time.
            read = _two_byte_reading(b[:head_end], fs, delims)
            if read is None:
                if isinstance(e, HL7Error):
                    e.control_id = control_id or None
                    raise
                bad = e
            else:
                again, charset, codec = read
                control_id = again[9].strip() if len(again) > 9 else ""
                try:
                    text, bad = b.decode(codec), None
                except UnicodeDecodeError as x:
                    bad = x
            if bad is not None:
                declared = f"MSH-18 declares {charset!r}" if charset else "MSH-18 is empty"
                raise HL7Error(f"bytes at offset {bad.start} are not valid {codec} ({declared}); fix the sender's "
                               f"character set or MSH-18", field="MSH-18", control_id=control_id or None) from None
        end = min(i for i in (text.find("\r"), text.find("\n"), len(text)) if i >= 0)
        hf = text[:end].split(fs)   # the header as decoded (MSH-9, -10, -12 for Message)
        control_id = hf[9].strip() if len(hf) > 9 else ""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    raw = []
    for n, s in enumerate(text.split("\r"), 1):
        if not s:
            continue
        name = s[:3]
        if not ((len(s) == 3 or len(s) > 3 and s[3] == fs) and name.isalnum() and name.isascii() and name.isupper()
                and not name[0].isdigit()):
            if not s.strip(" \t\x0b\x1c\x1a\x00"):
                continue
            raise HL7Error(f"line {n} is not an HL7 segment: {s[:40]!r}", control_id=control_id or None, line=n)
        if name == "MSH" and raw:
            raise HL7Error(f"a second MSH segment at line {n}: one message per call (use split() for files)",
                           field="MSH", control_id=control_id or None, line=n)
        raw.append((n, s))
    msg = Message(text, delims, charset, codec or "utf-8", hf, raw)
    if not msg.type:
        raise HL7Error("the message type (MSH-9) is empty", field="MSH-9", control_id=control_id or None, line=1)
    if not msg.control_id:
        raise HL7Error("the message control ID (MSH-10) is empty", field="MSH-10", line=1)
    return msg


# -- escapes -------------------------------------------------------------------------------------------------

_FORMAT = {".br": "\n", ".sp": "\n", "H": "", "N": "", ".fi": "", ".nf": "", ".sk": " "}


def unescape(v: str, delims, codec: str = "utf-8") -> str:
    """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\ \\Xhh..\\ \\.br\\ and friends; anything unknown is kept as written."""
    e = delims[3]
    if not e or e not in v:
        return v
    out, i, n = [], 0, len(v)
    while i < n:
        j = v.find(e, i)
        if j < 0:
            break
        k = v.find(e, j + 1)
        if k < 0:
            break
        out.append(v[i:j])
        code = v[j + 1:k]
        c0 = code[:1]
        if code == "F":
            out.append(delims[0])
        elif code == "S":
            out.append(delims[1])
        elif code == "T":
            out.append(delims[4])
        elif code == "R":
            out.append(delims[2])
        elif code == "E":
            out.append(e)
        elif code == "P" and delims[5]:
            out.append(delims[5])
        elif c0 == "X" and len(code) > 1:
            try:
                out.append(bytes.fromhex(code[1:]).decode(codec))
            except (ValueError, LookupError):
                out.append(v[j:k + 1])
        elif code in _FORMAT:
            out.append(_FORMAT[code])
        elif code[:3] in (".sp", ".in", ".ti", ".ce"):
            out.append("\n" if code[:3] in (".sp", ".ce") else "")
        elif c0 in ("C", "M") and len(code) > 1 and all(ch in "0123456789ABCDEFabcdef" for ch in code[1:]):
            pass  # ISO 2022 character set switch: the text was already decoded
        else:
            out.append(v[j:k + 1])  # unknown (e.g. \Z..\ locally defined): keep as written
        i = k + 1
    out.append(v[i:])
    return "".join(out)


def escape(v: str, delims=("|", "^", "~", "\\", "&", "")) -> str:
    """Escape text for use as a field value."""
    e = delims[3] or "\\"
    v = v.replace(e, f"{e}E{e}")
    for ch, code in ((delims[0], "F"), (delims[1], "S"), (delims[4], "T"), (delims[2], "R")):
        if ch:
            v = v.replace(ch, f"{e}{code}{e}")
    return v.replace("\r\n", f"{e}.br{e}").replace("\n", f"{e}.br{e}").replace("\r", f"{e}.br{e}")


# -- typed values ---------------------------------------------------------------------------------------------

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?\s*(?:[+-]\d{2,4})?$")


def timestamp(v: str) -> dt.datetime | None:
    """HL7 DTM/TS `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]` as the written wall-clock time; ValueError if invalid."""
    v = v.strip()
    if not v:
        return None
    m = _TS.match(v)
    if not m:
        raise ValueError(f"{v!r} is not an HL7 date/time")
    y, mo, d, h, mi, s, frac = m.groups()
    return dt.datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0),
                       int((frac or "0").ljust(6, "0")))


def date(v: str) -> dt.date | None:
    t = timestamp(v)
    return t.date() if t else None


_NUM = re.compile(r"^\s*([<>]=?|=)?\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$")
_RANGE = re.compile(r"^\s*([<>]=?)?\s*([+-]?\d+(?:\.\d+)?)\s*(?:(?:-|_|~|to|–)\s*([+-]?\d+(?:\.\d+)?))?\s*$")


def _number(text: str | None) -> float | None:
    """A plain decimal number (exponent allowed) within a double's range; else None (float() reads nan, inf)."""
    m = _NUM.match(text) if text else None
    if m is None or m.group(1):
        return None
    v = float(m.group(2))
    return v if math.isfinite(v) else None


_TS_CACHE: dict[str, dt.datetime] = {}

# -- staging schemas ------------------------------------------------------------------------------------------

S, TS, D, F, I = pa.string(), pa.timestamp("us"), pa.date32(), pa.float64(), pa.int32()
IDENT = {b"identifying": b"true"}
FREE = {b"free_text": b"true"}

_COMMON = [("control_id", S), ("message_type", S), ("event_time", TS), ("segment_line", I)]
_PAT = [("patient_id", S, IDENT), ("visit_number", S)]
# PID fields whose explicit null `""` (delete the value) is staged in `removed`: name, birth, sex, address, phones,
# death time, death indicator
_REMOVABLE = (5, 7, 8, 11, 13, 14, 29, 30)

_TABLES = {
    "stg_hl7_message": [
        ("trigger", S), ("structure", S), ("version", S), ("charset", S), ("sending_application", S),
        ("sending_facility", S), ("receiving_application", S), ("receiving_facility", S), ("message_time", TS),
        ("processing_id", S), ("event_type", S), ("patient_id", S, IDENT), ("segment_count", I),
        ("segment_names", S)],
    "stg_hl7_patient": [
        ("event_type", S), ("patient_id", S, IDENT), ("patient_id_type", S), ("patient_id_authority", S),
        ("identifiers", S, IDENT), ("national_id", S, IDENT), ("national_id_type", S), ("names", S, IDENT),
        ("family_name", S, IDENT), ("given_name", S, IDENT), ("middle_name", S, IDENT),
        ("birth_date", D, IDENT), ("birth_time", TS, IDENT), ("sex", S), ("race", S), ("ethnicity", S),
        ("marital_status", S), ("religion", S), ("language", S),
        ("address_street", S, IDENT), ("address_other", S, IDENT), ("address_city", S, IDENT),
        ("address_state", S, IDENT), ("address_postal_code", S, IDENT), ("address_country", S),
        ("address_county", S, IDENT), ("phone_home", S, IDENT), ("phone_business", S, IDENT),
        ("email", S, IDENT), ("account_number", S, IDENT), ("death_time", TS), ("death_indicator", S),
        ("last_update_time", TS), ("removed", S)],
    "stg_hl7_visit": [
        ("event_type", S), *_PAT, ("patient_class", S), ("point_of_care", S), ("room", S), ("bed", S),
        ("facility", S), ("location", S), ("prior_location", S), ("admission_type", S),
        ("attending_doctor_id", S), ("attending_doctor_name", S, IDENT), ("referring_doctor_id", S),
        ("admitting_doctor_id", S), ("hospital_service", S), ("admit_source", S), ("patient_type", S),
        ("financial_class", S), ("discharge_disposition", S), ("discharged_to", S), ("servicing_facility", S),
        ("admit_time", TS), ("discharge_time", TS), ("admit_reason_code", S), ("admit_reason_text", S)],
    "stg_hl7_diagnosis": [
        ("source_segment", S), *_PAT, ("set_id", S), ("code", S), ("code_text", S), ("code_system", S),
        ("alt_code", S), ("alt_code_text", S), ("alt_code_system", S), ("description", S),
        ("diagnosis_time", TS), ("diagnosis_type", S), ("priority", S), ("clinician_id", S), ("action", S)],
    "stg_hl7_procedure": [
        *_PAT, ("set_id", S), ("code", S), ("code_text", S), ("code_system", S), ("description", S),
        ("procedure_time", TS), ("functional_type", S), ("minutes", F)],
    "stg_hl7_allergy": [
        *_PAT, ("set_id", S), ("allergen_type", S), ("code", S), ("code_text", S), ("code_system", S),
        ("severity", S), ("reaction", S), ("identified_date", D)],
    "stg_hl7_observation": [
        *_PAT, ("context", S), ("placer_number", S), ("filler_number", S), ("order_code", S),
        ("order_code_text", S), ("order_code_system", S), ("set_id", S), ("value_type", S), ("code", S),
        ("code_text", S), ("code_system", S), ("alt_code", S), ("alt_code_text", S), ("alt_code_system", S),
        ("sub_id", S), ("value_text", S, FREE), ("value_number", F), ("value_comparator", S),
        ("value_number_high", F), ("value_code", S), ("value_code_text", S), ("value_code_system", S),
        ("units", S), ("units_text", S), ("units_system", S), ("reference_range", S), ("range_low", F),
        ("range_high", F), ("abnormal_flags", S), ("result_status", S), ("observation_time", TS),
        ("specimen_time", TS), ("analysis_time", TS), ("producer", S), ("observer_id", S), ("method", S)],
    "stg_hl7_order": [
        *_PAT, ("order_control", S), ("placer_number", S), ("filler_number", S), ("placer_group", S),
        ("order_status", S), ("code", S), ("code_text", S), ("code_system", S), ("priority", S),
        ("requested_time", TS), ("observation_time", TS), ("observation_end_time", TS), ("ordered_time", TS),
        ("ordering_provider_id", S), ("specimen_source", S), ("diagnostic_service", S), ("result_status", S),
        ("result_time", TS), ("reason_code", S), ("reason_text", S)],
    "stg_hl7_medication": [
        ("source_segment", S), *_PAT, ("order_control", S), ("placer_number", S), ("filler_number", S),
        ("drug_code", S), ("drug_name", S), ("drug_code_system", S), ("dose", F), ("dose_max", F),
        ("dose_units", S), ("dosage_form", S), ("quantity", F), ("quantity_units", S), ("refills", F),
        ("route", S), ("route_text", S), ("site", S), ("frequency", S), ("start_time", TS), ("end_time", TS),
        ("ordered_time", TS), ("dispensed_time", TS), ("prescription_number", S), ("ordering_provider_id", S)],
    "stg_hl7_immunization": [
        *_PAT, ("placer_number", S), ("filler_number", S), ("administered_time", TS),
        ("administered_end_time", TS), ("vaccine_code", S), ("vaccine_name", S), ("vaccine_code_system", S),
        ("amount", F), ("amount_units", S), ("information_source", S), ("administering_provider_id", S),
        ("lot_number", S), ("expiration_date", D), ("manufacturer_code", S), ("manufacturer_name", S),
        ("refusal_reason", S), ("completion_status", S), ("action_code", S), ("route", S), ("site", S)],
    "stg_hl7_document": [
        *_PAT, ("document_type", S), ("content_presentation", S), ("activity_time", TS), ("author_id", S),
        ("author_name", S, IDENT), ("origination_time", TS), ("transcription_time", TS), ("edit_time", TS),
        ("document_id", S), ("parent_document_id", S), ("placer_number", S), ("filler_number", S),
        ("completion_status", S), ("confidentiality", S), ("availability", S), ("text", S, FREE),
        ("encapsulated_type", S), ("encapsulated", S, FREE)],
    "stg_hl7_merge": [
        ("event_type", S), *_PAT, ("prior_patient_id", S, IDENT), ("prior_patient_id_type", S),
        ("prior_patient_id_authority", S), ("prior_identifiers", S, IDENT), ("prior_account_number", S, IDENT),
        ("prior_visit_number", S), ("prior_patient_name", S, IDENT)],
}


def _schema(cols) -> pa.Schema:
    out = []
    for c in [*_COMMON, *cols, ("notes", S)]:
        out.append(pa.field(c[0], c[1], metadata=c[2] if len(c) > 2 else None))
    return pa.schema(out)


STAGING_SCHEMAS: dict[str, pa.Schema] = {name: _schema(cols) for name, cols in _TABLES.items()}


# -- staging --------------------------------------------------------------------------------------------------

# message types whose content is about one patient: a PID segment is mandatory
_NEEDS_PATIENT = {"ADT", "ORU", "ORM", "OML", "RDE", "RDS", "VXU", "MDM", "PPR", "OMP", "RAS", "SIU", "BAR", "DFT"}
_TEXT_TYPES = {"TX", "FT", "ST", "ED", "RP", "", "CF"}
_CODED = {"CE", "CWE", "CNE", "CF", "CD"}
_NATIONAL = {"NI", "SS", "SSN", "NNCHN", "ID", "CZ", "PPN"}


class _Stager:
    def __init__(self, msg: Message):
        self.msg = msg
        self.d = msg.delims
        d = self.d
        self.special = tuple(x for x in (d[1], d[2], d[3], d[4]) if x)   # a value without these is plain text
        self.out: dict[str, list[dict]] = {}
        self.notes: list[str] = []
        self.imm: dict | None = None
        self.obr_ctx: dict = {}
        self._comps: dict = {}
        self._pids: dict = {}

    # small readers ------------------------------------------------------------------------------------------
    def comps(self, seg: Segment, n: int, r: int = 1) -> list[str]:
        """The components of one repetition of field n, escapes resolved, HL7 null ("") as empty."""
        key = (seg.line, n, r)
        got = self._comps.get(key)
        if got is None:
            got = self._comps[key] = self._split(seg, n, r)
        return got

    def _split(self, seg: Segment, n: int, r: int) -> list[str]:
        v = seg.field(n)
        if not v:
            return []
        d = self.d
        if d[2] and d[2] in v:
            reps = v.split(d[2])
            v = reps[r - 1] if r <= len(reps) else ""
        elif r > 1:
            return []
        parts = v.split(d[1]) if d[1] in v else [v]
        if d[3] and d[3] in v:
            parts = [self.msg.unescape(p) for p in parts]
        return ["" if p == '""' else p for p in parts]

    def c(self, seg: Segment | None, n: int, c: int = 1, r: int = 1) -> str | None:
        """Component c of field n (its subcomponents joined by a space); None when empty."""
        if seg is None:
            return None
        f = seg.fields
        if n >= len(f):
            return None
        v = f[n]
        if not v:
            return None
        for ch in self.special:
            if ch in v:
                break
        else:  # plain text: the common case
            return v if c == 1 and r == 1 and v != '""' else None
        parts = self.comps(seg, n, r)
        v = parts[c - 1] if c <= len(parts) else ""
        if v and self.d[4] and self.d[4] in v:
            v = " ".join(x for x in v.split(self.d[4]) if x)
        return v or None

    def sub(self, seg: Segment, n: int, c: int = 1, s: int = 1) -> str | None:
        parts = self.comps(seg, n)
        v = parts[c - 1] if c <= len(parts) else ""
        if self.d[4] and self.d[4] in v:
            subs = v.split(self.d[4])
            v = subs[s - 1] if s <= len(subs) else ""
        elif s > 1:
            v = ""
        return v or None

    def text(self, seg: Segment, n: int, sep: str = "~") -> str | None:
        """The whole field as text: repetitions joined by `sep`, escapes resolved."""
        v = seg.field(n)
        if not v or v == '""':
            return None
        if self.d[2] and self.d[2] in v:
            v = sep.join(v.split(self.d[2]))
        return self.msg.unescape(v) if self.d[3] and self.d[3] in v else v

    def ts(self, seg: Segment | None, n: int, c: int = 1, r: int = 1) -> dt.datetime | None:
        v = self.c(seg, n, c, r)
        if not v:
            return None
        t = _TS_CACHE.get(v)
        if t is not None:
            return t
        try:
            t = timestamp(v)
            if len(_TS_CACHE) > 20000:
                _TS_CACHE.clear()
            _TS_CACHE[v] = t
            return t
        except ValueError:
            self.notes.append(f"{seg.name}-{n}: {v!r} is not a valid date/time")
            return None

    def date(self, seg: Segment, n: int, c: int = 1) -> dt.date | None:
        t = self.ts(seg, n, c)
        return t.date() if t else None

    def num(self, seg: Segment, n: int, c: int = 1) -> float | None:
        v = self.c(seg, n, c)
        if not v:
            return None
        if (x := _number(v)) is not None:
            return x
        self.notes.append(f"{seg.name}-{n}: {v!r} is not a number")
        return None

    def code(self, seg: Segment, n: int, r: int = 1) -> tuple:
        p = self.comps(seg, n, r) + [""] * 6
        return (p[0] or None, p[1] or None, p[2] or None, p[3] or None, p[4] or None, p[5] or None)

    def row(self, table: str, seg: Segment, **values) -> dict:
        values.update(self.base)
        values["segment_line"] = seg.line
        values["notes"] = "; ".join(self.notes) if self.notes else None
        self.notes = []
        self.out.setdefault(table, []).append(values)
        return values

    def fail(self, reason: str, seg: Segment, n: int | None = None):
        field = f"{seg.name}-{n}" if n else seg.name
        raise HL7Error(reason, field=field, control_id=self.msg.control_id, line=seg.line)

    # the message ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, list[dict]]:
        msg = self.msg
        msh = msg.header
        evn = msg.segment("EVN")
        event_time = None
        if evn is not None:
            event_time = self.ts(evn, 6) or self.ts(evn, 2)
        event_time = event_time or self.ts(msh, 7)
        self.base = {"control_id": msg.control_id, "message_type": msg.type, "event_time": event_time}
        kind = msg.type.split("^")[0]
        segs = msg.segments
        pid = msg.segment("PID")
        if pid is None and kind in _NEEDS_PATIENT:
            raise HL7Error(f"the PID segment is missing (a {msg.type} message needs one)", field="PID",
                           control_id=msg.control_id)
        self.patient = self.patient_id(pid) if pid is not None else None
        pv1 = msg.segment("PV1")
        self.visit = self.c(pv1, 19) if pv1 is not None else None
        self.row("stg_hl7_message", msh, trigger=msg.trigger or None, structure=msg.structure or None,
                 version=msg.version or None, charset=msg.charset or None,
                 sending_application=self.c(msh, 3), sending_facility=self.c(msh, 4),
                 receiving_application=self.c(msh, 5), receiving_facility=self.c(msh, 6),
                 message_time=self.ts(msh, 7), processing_id=self.c(msh, 11),
                 event_type=(self.c(evn, 1) if evn is not None else None) or msg.trigger or None,
                 patient_id=self.patient[0] if self.patient else None, segment_count=len(segs),
                 segment_names=" ".join(s.name for s in segs))
        self.orc = self.obr = None
        self.med = None          # the current medication row (RXR/TQ1 after it refine it)
        self.med_defaults: dict = {}
        self.doc = None
        self.context = None
        is_mdm = kind == "MDM"
        for seg in segs:
            name = seg.name
            if name == "OBX":
                if is_mdm:
                    self.document_text(seg)
                else:
                    self.observation(seg)
                continue
            h = _HANDLERS.get(name)
            if h is not None:
                h(self, seg)
            if name not in ("NTE", "PRT", "TQ1", "TQ2", "RXR", "RXC", "CTI", "ROL", "SPM"):
                self.context = name
        return self.out

    def patient_id(self, pid: Segment) -> tuple:
        if pid.line not in self._pids:
            self._pids[pid.line] = self._patient_id(pid)
        return self._pids[pid.line]

    def _patient_id(self, pid: Segment) -> tuple:
        best = None
        for r in range(1, len(pid.reps(3)) + 1):
            p = self.comps(pid, 3, r) + [""] * 5
            if not p[0]:
                continue
            auth = p[3].split(self.d[4])[0] if self.d[4] else p[3]
            if best is None or (p[4] == "MR" and best[1] != "MR"):
                best = (p[0], p[4] or None, auth or None)
        if best is None:
            for n in (2, 4):
                v = self.c(pid, n)
                if v:
                    best = (v, self.c(pid, n, 5), self.sub(pid, n, 4))
                    break
        if best is None:
            self.fail("the patient identifier (PID-3) is empty", pid, 3)
        return best

    def pid(self, seg: Segment):
        self.patient = self.patient_id(seg)
        national = ntype = None
        for r in range(1, len(seg.reps(3)) + 1):
            p = self.comps(seg, 3, r) + [""] * 5
            if p[0] and (p[4] in _NATIONAL or p[4].startswith("NN")):
                national, ntype = p[0], p[4]
                break
        if national is None and self.c(seg, 19):
            national, ntype = self.c(seg, 19), "SS"
        home = self.phone(seg, 13)
        email = None
        p13 = self.comps(seg, 13)
        if len(p13) > 3 and p13[3] and p13[2].upper() in ("INTERNET", "X.400", "NET"):
            email = p13[3]
        bt = self.ts(seg, 7)
        self.row("stg_hl7_patient", seg, event_type=self.msg.trigger or None, patient_id=self.patient[0],
                 patient_id_type=self.patient[1], patient_id_authority=self.patient[2],
                 identifiers=self.text(seg, 3), national_id=national, national_id_type=ntype,
                 names=self.text(seg, 5), family_name=self.c(seg, 5, 1), given_name=self.c(seg, 5, 2),
                 middle_name=self.c(seg, 5, 3), birth_date=bt.date() if bt else None,
                 birth_time=bt if bt and (bt.hour or bt.minute) else None, sex=self.c(seg, 8),
                 race=self.c(seg, 10), ethnicity=self.c(seg, 22), marital_status=self.c(seg, 16),
                 religion=self.c(seg, 17), language=self.c(seg, 15),
                 address_street=self.c(seg, 11, 1), address_other=self.c(seg, 11, 2),
                 address_city=self.c(seg, 11, 3), address_state=self.c(seg, 11, 4),
                 address_postal_code=self.c(seg, 11, 5), address_country=self.c(seg, 11, 6),
                 address_county=self.c(seg, 11, 9), phone_home=home, phone_business=self.phone(seg, 14),
                 email=email, account_number=self.c(seg, 18), death_time=self.ts(seg, 29),
                 death_indicator=self.c(seg, 30), last_update_time=self.ts(seg, 33),
                 removed=" ".join(f"PID-{n}" for n in _REMOVABLE if seg.field(n) == '""') or None)

    def phone(self, seg: Segment, n: int) -> str | None:
        p = self.comps(seg, n) + [""] * 12
        if p[0]:
            return p[0]
        if p[11]:
            return p[11]
        if p[6]:
            return "".join(x for x in (p[4] and f"+{p[4]} ", p[5] and f"({p[5]})", p[6]) if x)
        return None

    def pv1(self, seg: Segment):
        self.visit = self.c(seg, 19)
        pv2 = None
        for s in self.msg.segments:
            if s.name == "PV2" and s.line > seg.line:
                pv2 = s
                break
        loc = self.comps(seg, 3)
        self.row("stg_hl7_visit", seg, event_type=self.msg.trigger or None, patient_id=self.pat(),
                 visit_number=self.visit, patient_class=self.c(seg, 2), point_of_care=self.c(seg, 3, 1),
                 room=self.c(seg, 3, 2), bed=self.c(seg, 3, 3), facility=self.sub(seg, 3, 4, 1),
                 location=self.d[1].join(loc).rstrip(self.d[1]) or None, prior_location=self.text(seg, 6),
                 admission_type=self.c(seg, 4), attending_doctor_id=self.c(seg, 7, 1),
                 attending_doctor_name=" ".join(x for x in (self.c(seg, 7, 3), self.c(seg, 7, 2)) if x) or None,
                 referring_doctor_id=self.c(seg, 8, 1), admitting_doctor_id=self.c(seg, 17, 1),
                 hospital_service=self.c(seg, 10), admit_source=self.c(seg, 14), patient_type=self.c(seg, 18),
                 financial_class=self.c(seg, 20), discharge_disposition=self.c(seg, 36),
                 discharged_to=self.c(seg, 37), servicing_facility=self.c(seg, 39),
                 admit_time=self.ts(seg, 44), discharge_time=self.ts(seg, 45),
                 admit_reason_code=self.c(pv2, 3, 1) if pv2 else None,
                 admit_reason_text=self.c(pv2, 3, 2) if pv2 else None)

    def pat(self) -> str | None:
        return self.patient[0] if self.patient else None

    def dg1(self, seg: Segment):
        code, text, system, acode, atext, asystem = self.code(seg, 3)
        desc = self.text(seg, 4)
        if not code and not text and not desc:
            self.fail("the diagnosis code (DG1-3) is empty", seg, 3)
        self.row("stg_hl7_diagnosis", seg, source_segment="DG1", patient_id=self.pat(), visit_number=self.visit,
                 set_id=self.c(seg, 1), code=code, code_text=text or desc, code_system=system or self.c(seg, 2),
                 alt_code=acode, alt_code_text=atext, alt_code_system=asystem, description=desc,
                 diagnosis_time=self.ts(seg, 5), diagnosis_type=self.c(seg, 6), priority=self.c(seg, 15),
                 clinician_id=self.c(seg, 16))

    def prb(self, seg: Segment):
        code, text, system, acode, atext, asystem = self.code(seg, 3)
        if not code and not text:
            self.fail("the problem code (PRB-3) is empty", seg, 3)
        self.row("stg_hl7_diagnosis", seg, source_segment="PRB", patient_id=self.pat(), visit_number=self.visit,
                 set_id=self.c(seg, 4), code=code, code_text=text, code_system=system, alt_code=acode,
                 alt_code_text=atext, alt_code_system=asystem, diagnosis_time=self.ts(seg, 16) or self.ts(seg, 2),
                 diagnosis_type="problem", action=self.c(seg, 1))

    def pr1(self, seg: Segment):
        code, text, system, *_ = self.code(seg, 3)
        desc = self.text(seg, 4)
        if not code and not text and not desc:
            self.fail("the procedure code (PR1-3) is empty", seg, 3)
        self.row("stg_hl7_procedure", seg, patient_id=self.pat(), visit_number=self.visit, set_id=self.c(seg, 1),
                 code=code, code_text=text or desc, code_system=system or self.c(seg, 2), description=desc,
                 procedure_time=self.ts(seg, 5), functional_type=self.c(seg, 6), minutes=self.num(seg, 7))

    def al1(self, seg: Segment):
        code, text, system, *_ = self.code(seg, 3)
        if not code and not text:
            self.fail("the allergen (AL1-3) is empty", seg, 3)
        self.row("stg_hl7_allergy", seg, patient_id=self.pat(), visit_number=self.visit, set_id=self.c(seg, 1),
                 allergen_type=self.c(seg, 2), code=code, code_text=text, code_system=system,
                 severity=self.c(seg, 4), reaction=self.text(seg, 5), identified_date=self.date(seg, 6))

    def mrg(self, seg: Segment):
        p = self.comps(seg, 1) + [""] * 5
        if not p[0] and not self.c(seg, 3) and not self.c(seg, 5):
            self.fail("the prior patient identifier (MRG-1) is empty", seg, 1)
        self.row("stg_hl7_merge", seg, event_type=self.msg.trigger or None, patient_id=self.pat(),
                 visit_number=self.visit, prior_patient_id=p[0] or None, prior_patient_id_type=p[4] or None,
                 prior_patient_id_authority=(p[3].split(self.d[4])[0] if self.d[4] else p[3]) or None,
                 prior_identifiers=self.text(seg, 1), prior_account_number=self.c(seg, 3),
                 prior_visit_number=self.c(seg, 5), prior_patient_name=self.text(seg, 7))

    def orc_(self, seg: Segment):
        self.orc, self.obr, self.med, self.obr_ctx = seg, None, None, {}
        self.med_defaults = {}

    def obr_(self, seg: Segment):
        self.obr = seg
        orc = self.orc
        code, text, system, *_ = self.code(seg, 4)
        if not code and not text:
            self.fail("the order's universal service identifier (OBR-4) is empty", seg, 4)
        c = self.c
        self.obr_ctx = {"placer_number": c(seg, 2) or c(orc, 2), "filler_number": c(seg, 3) or c(orc, 3),
                        "order_code": code, "order_code_text": text, "order_code_system": system,
                        "specimen_time": self.ts(seg, 7)}
        self.row("stg_hl7_order", seg, patient_id=self.pat(), visit_number=self.visit,
                 order_control=c(orc, 1) if orc else None,
                 placer_number=c(seg, 2) or (c(orc, 2) if orc else None),
                 filler_number=c(seg, 3) or (c(orc, 3) if orc else None),
                 placer_group=c(orc, 4) if orc else None, order_status=c(orc, 5) if orc else None,
                 code=code, code_text=text, code_system=system, priority=c(seg, 5) or (c(orc, 7, 6) if orc else None),
                 requested_time=self.ts(seg, 6), observation_time=self.ts(seg, 7),
                 observation_end_time=self.ts(seg, 8), ordered_time=self.ts(orc, 9) if orc else None,
                 ordering_provider_id=c(seg, 16) or (c(orc, 12) if orc else None), specimen_source=c(seg, 15),
                 diagnostic_service=c(seg, 24), result_status=c(seg, 25), result_time=self.ts(seg, 22),
                 reason_code=c(seg, 31, 1), reason_text=c(seg, 31, 2))

    def observation(self, seg: Segment):
        c = self.c
        vt = (c(seg, 2) or "").upper()
        code, text, system, acode, atext, asystem = self.code(seg, 3)
        if not code and not text and vt not in _TEXT_TYPES:
            self.fail("the observation identifier (OBX-3) is empty", seg, 3)
        value_text = number = comparator = high = vcode = vtext = vsystem = None
        if vt in _CODED:
            vcode, vtext, vsystem, *_ = self.code(seg, 5)
            value_text = vtext or vcode
        elif vt == "SN":
            p = self.comps(seg, 5) + [""] * 4
            value_text = "".join(p[:4]) or None
            comparator = p[0] or None
            number = _number(p[1])
            high = _number(p[3]) if p[2] in ("-", "") else None
            if (p[1] and number is None) or (p[3] and p[2] in ("-", "") and high is None):
                self.notes.append(f"OBX-5: {value_text!r} is not a structured numeric value")
                number = high = None
        else:
            value_text = self.text(seg, 5, "\n" if vt in ("TX", "FT") else "~")
            if vt == "NM" and value_text:
                m = _NUM.match(value_text.split("~")[0])
                if m and math.isfinite(float(m.group(2))):
                    comparator, number = m.group(1), float(m.group(2))
                else:
                    self.notes.append(f"OBX-5: {value_text!r} is not a number (OBX-2 is NM)")
        rr = self.text(seg, 7)
        low = rhigh = None
        if rr:
            m = _RANGE.match(rr)
            if m and all(math.isfinite(float(g)) for g in m.groups()[1:] if g):
                if m.group(1):
                    (low, rhigh) = (float(m.group(2)), None) if m.group(1)[0] == ">" else (None, float(m.group(2)))
                else:
                    low = float(m.group(2))
                    rhigh = float(m.group(3)) if m.group(3) else None
        ctx = self.obr_ctx if self.obr is not None else {"placer_number": c(self.orc, 2),
                                                         "filler_number": c(self.orc, 3)}
        f8 = seg.field(8)
        flags = (f8 if f8 and f8 != '""' and not any(ch in f8 for ch in self.special) else
                 "~".join(x for x in (c(seg, 8, 1, r) for r in range(1, len(seg.reps(8)) + 1)) if x)) or None
        units = self.code(seg, 6) if seg.field(6) else (None, None, None)
        self.row("stg_hl7_observation", seg, patient_id=self.pat(), visit_number=self.visit, context=self.context,
                 **ctx, set_id=c(seg, 1), value_type=vt or None,
                 code=code, code_text=text, code_system=system, alt_code=acode, alt_code_text=atext,
                 alt_code_system=asystem, sub_id=c(seg, 4), value_text=value_text, value_number=number,
                 value_comparator=comparator, value_number_high=high, value_code=vcode, value_code_text=vtext,
                 value_code_system=vsystem, units=units[0], units_text=units[1], units_system=units[2],
                 reference_range=rr, range_low=low, range_high=rhigh, abnormal_flags=flags,
                 result_status=c(seg, 11), observation_time=self.ts(seg, 14) or ctx.get("specimen_time"),
                 analysis_time=self.ts(seg, 19),
                 producer=c(seg, 15), observer_id=c(seg, 16), method=c(seg, 17))

    def rx(self, seg: Segment):
        c, name = self.c, seg.name
        field = {"RXE": 2, "RXD": 2, "RXO": 1, "RXG": 4}[name]
        code, text, system, *_ = self.code(seg, field)
        if not code and not text:
            self.fail(f"the drug ({name}-{field}) is empty", seg, field)
        orc = self.orc
        if name == "RXE":
            v = dict(dose=self.num(seg, 3), dose_max=self.num(seg, 4), dose_units=c(seg, 5), dosage_form=c(seg, 6),
                     quantity=self.num(seg, 10), quantity_units=c(seg, 11), refills=self.num(seg, 12),
                     prescription_number=c(seg, 15), ordering_provider_id=c(seg, 13),
                     frequency=self.sub(seg, 1, 2, 1), start_time=self.ts(seg, 1, 4), end_time=self.ts(seg, 1, 5))
        elif name == "RXD":
            v = dict(quantity=self.num(seg, 4), quantity_units=c(seg, 5), dosage_form=c(seg, 6),
                     prescription_number=c(seg, 7), refills=self.num(seg, 8), dispensed_time=self.ts(seg, 3),
                     dose=self.num(seg, 12), dose_units=c(seg, 13))
        elif name == "RXG":
            v = dict(dose=self.num(seg, 5), dose_max=self.num(seg, 6), dose_units=c(seg, 7), dosage_form=c(seg, 8),
                     quantity=self.num(seg, 5), dispensed_time=self.ts(seg, 3, 4))
        else:
            v = dict(dose=self.num(seg, 2), dose_max=self.num(seg, 3), dose_units=c(seg, 4), dosage_form=c(seg, 5),
                     quantity=self.num(seg, 11), quantity_units=c(seg, 12), refills=self.num(seg, 13))
        if orc is not None and v.get("ordering_provider_id") is None:
            v["ordering_provider_id"] = c(orc, 12)
        for k, x in self.med_defaults.items():
            if v.get(k) is None:
                v[k] = x
        self.med = self.row("stg_hl7_medication", seg, source_segment=name, patient_id=self.pat(),
                            visit_number=self.visit, order_control=c(orc, 1) if orc else None,
                            placer_number=c(orc, 2) if orc else None, filler_number=c(orc, 3) if orc else None,
                            drug_code=code, drug_name=text, drug_code_system=system,
                            ordered_time=self.ts(orc, 9) if orc else None, **v)

    def _refine(self, values: dict, immunization: bool = False):
        """RXR/TQ1 after a drug segment fill in what it left empty; before one, they are the order's defaults."""
        values = {k: x for k, x in values.items() if x is not None}
        target = self.med
        if target is None and immunization and self.context == "RXA":
            target = self.imm
            values.pop("route_text", None)
        if target is None:
            self.med_defaults.update(values)
            return
        for k, x in values.items():
            if target.get(k) is None:
                target[k] = x

    def rxr(self, seg: Segment):
        self._refine({"route": self.c(seg, 1, 1), "route_text": self.c(seg, 1, 2), "site": self.c(seg, 2)},
                     immunization=True)

    def tq1(self, seg: Segment):
        self._refine({"frequency": self.c(seg, 3), "start_time": self.ts(seg, 7), "end_time": self.ts(seg, 8)})

    def rxa(self, seg: Segment):
        c = self.c
        code, text, system, *_ = self.code(seg, 5)
        if not code and not text:
            self.fail("the administered code (RXA-5) is empty", seg, 5)
        orc = self.orc
        self.med = None
        self.imm = self.row(
            "stg_hl7_immunization", seg, patient_id=self.pat(), visit_number=self.visit,
            placer_number=c(orc, 2) if orc else None, filler_number=c(orc, 3) if orc else None,
            administered_time=self.ts(seg, 3), administered_end_time=self.ts(seg, 4), vaccine_code=code,
            vaccine_name=text, vaccine_code_system=system, amount=self.num(seg, 6), amount_units=c(seg, 7),
            information_source=c(seg, 9), administering_provider_id=c(seg, 10), lot_number=c(seg, 15),
            expiration_date=self.date(seg, 16), manufacturer_code=c(seg, 17, 1), manufacturer_name=c(seg, 17, 2),
            refusal_reason=c(seg, 18), completion_status=c(seg, 20), action_code=c(seg, 21))

    def txa(self, seg: Segment):
        c = self.c
        self.doc = self.row(
            "stg_hl7_document", seg, patient_id=self.pat(), visit_number=self.visit, document_type=c(seg, 2),
            content_presentation=c(seg, 3), activity_time=self.ts(seg, 4), author_id=c(seg, 5, 1),
            author_name=" ".join(x for x in (c(seg, 9, 3), c(seg, 9, 2)) if x) or c(seg, 9, 1),
            origination_time=self.ts(seg, 6), transcription_time=self.ts(seg, 7), edit_time=self.ts(seg, 8),
            document_id=c(seg, 12), parent_document_id=c(seg, 13), placer_number=c(seg, 14),
            filler_number=c(seg, 15), completion_status=c(seg, 17), confidentiality=c(seg, 18),
            availability=c(seg, 19), text=None, encapsulated_type=None, encapsulated=None)

    def document_text(self, seg: Segment):
        if self.doc is None:
            self.doc = self.row("stg_hl7_document", seg, patient_id=self.pat(), visit_number=self.visit,
                                text=None, encapsulated_type=None, encapsulated=None)
        vt = (self.c(seg, 2) or "").upper()
        if vt == "ED":
            p = self.comps(seg, 5) + [""] * 5
            self.doc["encapsulated_type"] = "/".join(x for x in p[1:4] if x) or None
            self.doc["encapsulated"] = p[4] or None
            return
        v = self.code(seg, 5)[1] or self.c(seg, 5) if vt in _CODED else self.text(seg, 5, "\n")
        if v:
            self.doc["text"] = f"{self.doc['text']}\n{v}" if self.doc["text"] else v


_HANDLERS = {
    "PID": _Stager.pid, "PV1": _Stager.pv1, "DG1": _Stager.dg1, "PRB": _Stager.prb, "PR1": _Stager.pr1,
    "AL1": _Stager.al1, "MRG": _Stager.mrg, "ORC": _Stager.orc_, "OBR": _Stager.obr_, "RXE": _Stager.rx,
    "RXD": _Stager.rx, "RXO": _Stager.rx, "RXG": _Stager.rx, "RXR": _Stager.rxr, "TQ1": _Stager.tq1,
    "RXA": _Stager.rxa, "TXA": _Stager.txa,
}


def stage(msg: Message) -> dict[str, list[dict]]:
    """Rows per staging table for one message (keys are the columns of `STAGING_SCHEMAS[table]`)."""
    st = _Stager(msg)
    try:
        return st.run()
    except HL7Error:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as e:  # a value we did not foresee: name the message
        raise HL7Error(f"cannot stage: {e}", control_id=msg.control_id) from e


# -- acknowledgements -----------------------------------------------------------------------------------------

def _header_fields(raw: bytes) -> list[str]:
    """MSH fields of a message that may not parse (MSH-n at index n), each as the bytes it holds read as latin-1:
    enough to answer it. Read again a character at a time when so read MSH-18 names a two-byte set (GBK, Big5:
    a second byte can be the field separator, as `parse` reads such a header)."""
    b = raw[3:] if raw.startswith(BOM) else raw
    b = b.lstrip(_BLANK)
    end = min([i for i in (b.find(b"\r"), b.find(b"\n")) if i >= 0] or [len(b)])
    head = b[:end].decode("latin-1")
    if not head.startswith("MSH") or len(head) < 5 or head[3].isalnum():
        return []
    fields = head.split(head[3])
    read = _two_byte_reading(b[:end], head[3], _delims(head[3], fields[1]))
    fields = read[0] if read else fields
    return [fields[0], head[3], *fields[1:]]


def _as_text(field: str, codec: str, fs: str) -> str:
    """A header field read as latin-1 (its bytes) as text of the message's character set; a byte not of that set
    as U+FFFD, and so the field separator (a 0x7C that, after a broken character, is none's second byte)."""
    try:
        return field.encode("latin-1").decode(codec)
    except UnicodeDecodeError:
        return field.encode("latin-1").decode(codec, "replace").replace(fs, "\ufffd")


def batch_ack(envelope: bytes, acks: list[bytes]) -> bytes:
    """The answer to an HL7 batch (v2.5.1 §2.10.3): a batch holding one ACK per message, in order — BHS (BHS-3..6
    the received BHS-5, -6, -3, -4; BHS-12 the received BHS-11, the batch control id), the ACKs, BTS-1 their count —
    inside FHS … FTS when the batch came in a file header. `envelope`: the received bytes before the first MSH."""
    heads = {}
    for line in re.split(rb"[\r\n]+", envelope.lstrip(b"\x0b\x1c\r\n \t")):
        if line[:3] in (b"FHS", b"BHS") and line[:3].decode() not in heads:
            heads[line[:3].decode()] = line.decode("utf-8", "replace").replace(VT.decode(), "").replace(FS.decode(), "")
    stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    sep = next((h[3] for h in heads.values() if len(h) > 3 and not h[3].isalnum()), "|")

    def header(kind: str, line: str) -> str:
        f = line.split(sep) if line else [kind]
        get = lambda n: f[n - 1] if 1 < n <= len(f) else ""  # noqa: E731 - field n (n >= 2) of the segment
        return sep.join([kind, get(2) or "^~\\&", get(5), get(6), get(3), get(4), stamp, "", "", "",
                         uuid.uuid4().hex[:20], get(11)])

    out = [header("FHS", heads["FHS"]).encode()] if "FHS" in heads else []
    out += [header("BHS", heads.get("BHS") or heads.get("FHS", "")).encode(), *(a.rstrip(b"\r") for a in acks),
            f"BTS{sep}{len(acks)}".encode()]
    if "FHS" in heads:
        out.append(f"FTS{sep}1".encode())
    return b"\r".join(out) + b"\r"


def ack(msg_or_raw: Message | bytes, code: str = "AA", text: str = "", *, error_field: str | None = None,
        error_code: str = "207^Application internal error^HL70357") -> bytes:
    """An ACK for a message (parsed, or raw bytes that may not parse), in its own delimiters and character set:
    MSA-1 = code, MSA-2 = its control ID, MSA-3 = text; AE/AR also get an ERR segment (v2.5 layout: ERR-2
    location, ERR-3 HL7 error code, ERR-4 severity, ERR-8 the reason)."""
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"ACK code must be AA, AE or AR, not {code!r}")
    if isinstance(msg_or_raw, Message):
        m = msg_or_raw
        fields, delims, codec, declared = m.header.fields, m.delims, m.codec, m.charset or ""
    else:
        # Echo only what the sender can read back: encoding characters that are valid (else the defaults, and
        # nothing of the header but MSH-10), and a character set medlake knows (else none: UTF-8).
        fields = _header_fields(msg_or_raw)
        if len(fields) > 2 and not (_delimiter(fields[1]) and _valid_encoding(fields[2])):
            fields = ["MSH", "|", ""] + [""] * 7 + [fields[10] if len(fields) > 10 else ""]
        delims = _delims(fields[1], fields[2]) if len(fields) > 2 and fields[2] else _delims("|", "^~\\&")
        codec = "utf-8"
        declared = _charset_field(fields[1:], delims)
        try:
            codec = codec_for(declared) if declared else codec
            if "MSH|".encode(codec, "replace") != b"MSH|":  # UTF-16/32 declared over a header read byte by byte
                raise HL7Error(f"MSH-18 {declared!r} does not match the bytes")
        except HL7Error:
            declared, codec = "", "utf-8"
        fields = fields[:2] + [_as_text(f, codec, fields[1]) for f in fields[2:]]  # (MSH-4 is echoed in MSH-6)
    if not declared.isascii():
        declared = ""
    get = lambda n: fields[n] if n < len(fields) else ""  # noqa: E731
    cs = delims[1]
    mt = get(9).split(cs)
    trigger = mt[1] if len(mt) > 1 else ""
    control = get(10).strip()
    version = get(12).split(cs)[0] or "2.5.1"
    fs = delims[0]
    enc = "".join(delims[1:]) if not (len(fields) > 2 and fields[2]) else get(2)
    stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    mtype = cs.join(["ACK", trigger, "ACK"]) if trigger else "ACK"
    msh = ["MSH", enc, get(5), get(6), get(3), get(4), stamp, "", mtype, uuid.uuid4().hex[:20], get(11) or "P",
           version]
    segs = [fs.join(["MSA", code, escape(control, delims), escape(text, delims)[:400]])]
    if code[1] != "A":
        where = ""
        m = re.match(r"^([A-Z][A-Z0-9]{2})-?(\d+)?", error_field or "")
        if m:
            where = cs.join([m.group(1), "1", m.group(2) or ""])
        err = error_code.replace("^", cs)
        segs.append(fs.join(["ERR", "", where, err, "E", "", "", "", escape(text, delims)[:400]]))
    # In the message's character set, saying so in MSH-18; what that set cannot hold goes in UTF-8, MSH-18 empty.
    for charset, enc_ in ((declared, codec), ("", "utf-8")) if declared else (("", "utf-8"),):
        out = "\r".join([fs.join(msh + ([""] * 5 + [charset] if charset else [])), *segs]) + "\r"
        out = out.replace(VT.decode(), "").replace(FS.decode(), "")    # echoed bytes must not end the frame
        try:
            return out.encode(enc_)
        except (UnicodeEncodeError, LookupError):
            continue
    return out.encode("utf-8", "replace")
