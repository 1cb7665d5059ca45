"""Sources as configuration: the `[[source]]` tables of a site's `sources.toml`.

```toml
[[source]]
name = "h2-pharmacy"     # unique
kind = "csv"             # hl7v2 | fhir | csv
hospital = "h2"
system = "pharmacy"      # his | lis | emr | pharmacy | …
path = "h2/pharmacy"     # file-drop folder, relative to this file
# mllp_port = 2575       # an hl7v2 source may arrive over MLLP instead (`medlake listen --sources`)
encoding = "gbk"         # csv: any Python codec name whose newline is one byte "\\n"; default utf-8
delimiter = ","
[source.columns]         # csv: staging field = source column header
record_id = "发药单号"
[source.formats]         # csv: strptime format per date/datetime field
dispensed_at = "%Y/%m/%d %H:%M"
[source.code_systems]    # csv: code system of each code field
drug_code = "urn:medlake:h2:pharmacy"
```

Every error names the file, the key and the reason, and all are found before anything runs.
"""
from __future__ import annotations

import codecs
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("hl7v2", "fhir", "csv")
KEYS = {"name", "kind", "hospital", "system", "path", "mllp_port", "upload", "encoding", "delimiter", "columns", "formats",
        "code_systems", "quotechar", "skip_rows"}


class SourceConfigError(ValueError):
    """The sources file is wrong; the message names file, key and reason (several problems joined by '; ')."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    hospital: str | None = None
    system: str | None = None
    path: Path | None = None  # absolute
    mllp_port: int | None = None
    upload: bool = False  # files are handed in with `medlake ingest FILE… --source NAME`
    encoding: str = "utf-8"
    delimiter: str = ","
    quotechar: str = '"'
    skip_rows: int = 0
    columns: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    code_systems: dict[str, str] = field(default_factory=dict)
    file: str | None = None  # the config file it came from

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path) if self.path else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Source":
        d = dict(d)
        d["path"] = Path(d["path"]) if d.get("path") else None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def load(path: str | Path, check_paths: bool = True) -> list[Source]:
    """Read and validate a sources file; raises SourceConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourceConfigError(f"{path}: cannot read the sources file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SourceConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SourceConfigError(f"{path}: not valid TOML: {e}") from e
    return parse(data, path, check_paths)


def parse(data: dict, path: Path, check_paths: bool = True) -> list[Source]:
    from medlake.sources import csvfile  # the CSV field catalogue

    errors: list[str] = []
    extra = sorted(set(data) - {"source"})
    if extra:
        errors.append(f"{path}: unknown top-level key(s) {', '.join(extra)}; sources are [[source]] tables")
    tables = data.get("source", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SourceConfigError(f"{path}: `source` must be an array of tables, written [[source]]")
    if not tables:
        errors.append(f"{path}: no [[source]] declared")
    out: list[Source] = []
    seen: dict[str, int] = {}
    ports: dict[int, str] = {}
    for i, t in enumerate(tables, 1):
        where = f"{path}: [[source]] #{i}" + (f" ({t['name']})" if isinstance(t.get("name"), str) else "")

        def bad(key: str, reason: str) -> None:
            errors.append(f"{where} key `{key}`: {reason}")

        for k in sorted(set(t) - KEYS):
            bad(k, f"unknown key (known: {', '.join(sorted(KEYS))})")
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            bad("name", "required, a non-empty string")
            continue
        if any(c in name for c in " /\\\t\n"):
            bad("name", f"{name!r} must not contain spaces or slashes")
        if name in seen:
            bad("name", f"{name!r} is already used by source #{seen[name]}")
        seen[name] = i
        kind = t.get("kind")
        if kind not in KINDS:
            bad("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
            continue
        for k in ("hospital", "system"):
            if k in t and not isinstance(t[k], str):
                bad(k, "must be a string")
        src_path = None
        if "path" in t:
            if not isinstance(t["path"], str) or not t["path"]:
                bad("path", "must be a non-empty string (a folder, relative to the sources file)")
            else:
                src_path = (path.parent / t["path"]).resolve()
                if check_paths and not src_path.exists():
                    bad("path", f"{src_path} does not exist")
        port = t.get("mllp_port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            bad("mllp_port", f"{port!r} is not a port number (1-65535)")
        elif port is not None and kind in KINDS and kind != "hl7v2":
            bad("mllp_port", f"MLLP carries HL7 v2: a {kind} source takes a `path` or `upload = true`")
        elif port is not None and port in ports:
            bad("mllp_port", f"port {port} is already that of source {ports[port]!r}; give each source its own "
                "port (or route one port's messages with `medlake listen --routes`)")
        elif port is not None:
            ports[port] = name
        upload = t.get("upload", False)
        if not isinstance(upload, bool):
            bad("upload", f"{upload!r} must be true or false")
            upload = False
        if src_path is None and port is None and not upload:
            bad("path", "give a file-drop folder `path`, an `mllp_port` or `upload = true`")
        opts = {}
        if kind == "csv":
            opts = _csv_options(t, bad, csvfile)
        elif any(k in t for k in ("columns", "formats", "code_systems", "encoding", "delimiter")):
            bad(next(k for k in ("columns", "formats", "code_systems", "encoding", "delimiter") if k in t),
                f"only csv sources take a column mapping, not {kind}")
        out.append(Source(name=name, kind=kind, hospital=t.get("hospital"), system=t.get("system"), path=src_path,
                          mllp_port=port, upload=upload, file=str(path), **opts))
    if errors:
        raise SourceConfigError("; ".join(errors))
    return out


def _csv_options(t: dict, bad, csvfile) -> dict:
    opts: dict = {}
    enc = t.get("encoding", "utf-8")
    try:
        codecs.lookup(enc)
        one, two = "\n".encode(enc), "\n\n".encode(enc)
        if len(two) - len(one) != 1 or not one.endswith(b"\n"):
            bad("encoding", f"{enc!r} is not line-oriented (newline is not one byte); export as UTF-8 or GB18030")
        opts["encoding"] = enc
    except (LookupError, TypeError):
        bad("encoding", f"{enc!r} is not a known encoding (e.g. utf-8, gbk, gb18030, latin-1)")
    for k, default in (("delimiter", ","), ("quotechar", '"')):
        v = t.get(k, default)
        if not isinstance(v, str) or len(v) != 1:
            bad(k, f"{v!r} must be one character")
        else:
            opts[k] = v
    skip = t.get("skip_rows", 0)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        bad("skip_rows", "must be a whole number ≥ 0")
    else:
        opts["skip_rows"] = skip
    system = t.get("system")
    fields = csvfile.fields_for(system) if isinstance(system, str) else None
    if system is None:
        bad("system", f"missing: a csv source names what its rows are (one of {', '.join(csvfile.FIELDS)})")
    elif fields is None:
        bad("system", f"{system!r} has no csv staging fields (known: {', '.join(csvfile.FIELDS)})")
    for key in ("columns", "formats", "code_systems"):
        v = t.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) and x for x in v.values()):
            bad(key, "must be a table of strings ([source.%s])" % key)
            v = {}
        opts[key] = dict(v)
    cols = opts["columns"]
    if not cols:
        bad("columns", "a csv source needs [source.columns]: staging field = column header")
    if fields is not None:
        for f in cols:
            if f not in fields:
                bad(f"columns.{f}", f"not a {system} staging field (known: {', '.join(fields)})")
        for f in csvfile.REQUIRED.get(system, ()):
            if cols and f not in cols:
                bad(f"columns.{f}", f"required for a {system} source: name the column that holds it")
    for f, fmt in opts["formats"].items():
        if f not in cols:
            bad(f"formats.{f}", "has a format but no column in [source.columns]")
        elif fields is not None and fields[f] not in ("date", "datetime"):
            bad(f"formats.{f}", f"{f} is a {fields[f]} field; formats are for dates and datetimes")
        elif "%" not in fmt:
            bad(f"formats.{f}", f"{fmt!r} is not a strptime format (e.g. \"%Y/%m/%d %H:%M\")")
    for f in opts["code_systems"]:
        if f not in cols:
            bad(f"code_systems.{f}", "has a code system but no column in [source.columns]")
    return opts
