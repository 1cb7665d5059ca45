"""Checks as data: every OHDSI DQD check, generated from the CDM spec and DQD's threshold files.

The CDM spec (`medlake.cdm.load`) decides which fields are required, primary keys, foreign keys and their
domain/class; DQD's files (`dqd/`, copied from OHDSI/DataQualityDashboard) give the check types, Kahn
categories and thresholds, and the plausibility rules the spec does not have. Where they disagree the spec
wins; `dqd_vs_spec` lists every difference.
"""
from __future__ import annotations

import csv
import datetime as dt
import difflib
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path

from medlake.cdm import model
from medlake.cdm.importer import other_version


@dataclass(frozen=True)
class CheckType:
    level: str  # TABLE, FIELD, CONCEPT
    name: str
    description: str
    context: str  # Kahn: Verification / Validation
    category: str  # Conformance / Completeness / Plausibility
    subcategory: str
    severity: str
    sql_file: str = ""  # DQD's SQL template for the check type (named in DQD's result files)


@dataclass(frozen=True)
class Check:
    """One concrete check: a check type on one table (and field, concept, unit)."""

    name: str
    level: str
    table: str
    field: str | None = None
    concept_id: int | None = None
    unit_concept_id: int | None = None
    threshold: float = 0.0
    category: str = ""
    subcategory: str = ""
    context: str = ""
    severity: str = ""
    description: str = ""
    params: tuple = ()  # (key, value) pairs, see `param`
    source: str = "dqd"  # dqd | medlake | site
    notes: str = ""  # the `…Notes` column of the threshold file (a site's own copy of DQD's: `threshold_file`)

    @property
    def id(self) -> str:
        parts = [self.level.lower(), self.name.lower(), self.table]
        parts += [str(p) for p in (self.field, self.concept_id, self.unit_concept_id) if p is not None]
        return "_".join(parts)

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


def example_ids(values) -> list[str]:
    """Example row ids as the results give them: text, and a violating row whose id is empty as NULL (isRequired of
    the table's own id)."""
    return ["NULL" if v is None else str(v) for v in values]


def fails(violated: int, pct: float, threshold: float) -> bool:
    """DQD's rule: threshold 0 fails on any violation, otherwise a share above the threshold (percent)."""
    return violated > 0 if threshold == 0 else pct * 100 > threshold


def _csv(name: str) -> list[dict[str, str]]:
    text = resources.files("medlake.quality").joinpath("dqd").joinpath(name).read_text(encoding="utf-8-sig")
    return list(csv.DictReader(text.splitlines(keepends=True)))


def dqd_rows(version: str, level: str, files: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of DQD's OMOP_CDMv<version>_<level>.csv (Check_Descriptions, Table_Level, Field_Level, Concept_Level),
    or of the site's own copy of that level among `files` (`threshold_file`). Each row says where it is from
    (`_at`: file and line)."""
    if version not in model.VERSIONS:
        raise ValueError(f"unknown OMOP CDM version {version!r}; supported: {', '.join(model.VERSIONS)}")
    own = _site_rows(level, files)
    if own is not None:
        return own
    name = f"OMOP_CDMv{version}_{level}.csv"
    return [r | {"_at": f"{name}:{n}"} for n, r in enumerate(_csv(name), 2)]


def _site_rows(level: str, files: tuple[str, ...]) -> list[dict[str, str]] | None:
    """The rows of the site's own threshold file of `level` among `files` (`threshold_file`), None without one."""
    for path in files:
        got, rows = threshold_file(path)
        if got == level:
            return rows
    return None


def threshold_files(paths, version: str = model.DEFAULT_VERSION) -> tuple[str, ...]:
    """A site's own copies of DQD's threshold files, read and checked (`threshold_file`, `_rows_of`), at most one
    per level; as absolute paths (what run.json records)."""
    out, seen = [], {}
    for path in paths:
        p = str(Path(path).resolve())
        level, rows = threshold_file(p)
        if level in seen:
            raise ValueError(f"two DQD {level} threshold files: {seen[level]} and {path} (give one per level)")
        _rows_of(model.load(version), level, rows)
        seen[level] = path
        out.append(p)
    return tuple(out)


def _rows_of(cdm: model.CDM, level: str, rows: list[dict[str, str]]) -> None:
    """Each row of a site's threshold file names a table (and field) of the CDM, and no two rows the same one (or
    the same concept and unit): a misspelt name's rules would be left out, and of two rows one would be, unsaid."""
    seen: dict[tuple[str, ...], str] = {}
    other = model.load(other_version(cdm.version))
    for r in rows:
        table, fld = r["cdmTableName"].strip().lower(), (r.get("cdmFieldName") or "").strip().lower()
        if (table not in cdm.table_names or level != "Table_Level" and fld not in cdm.table(table).field_names) and (
                table in other.table_names and (level == "Table_Level" or fld in other.table(table).field_names)):
            raise ValueError(f"{r['_at']}: {table}{'.' + fld if level != 'Table_Level' else ''} is of OMOP CDM "
                             f"v{other.version}, not v{cdm.version}: the file is of the other version (DQD's "
                             f"OMOP_CDMv{other.version}_{level}.csv?); give the v{cdm.version} one")
        if table not in cdm.table_names:
            near = difflib.get_close_matches(table, cdm.table_names, 1)
            raise ValueError(f"{r['_at']}: no table {table!r} in OMOP CDM v{cdm.version}"
                             + (f" (did you mean {near[0]}?)" if near else "") + "; fix or remove the row")
        if level != "Table_Level" and fld not in cdm.table(table).field_names:
            near = difflib.get_close_matches(fld, cdm.table(table).field_names, 1)
            raise ValueError(f"{r['_at']}: no field {fld!r} in {table} (OMOP CDM v{cdm.version})"
                             + (f" (did you mean {near[0]}?)" if near else "") + "; fix or remove the row")
        key = (table, fld, (r.get("conceptId") or "").strip(), (r.get("unitConceptId") or "").strip())
        if key in seen:
            what = ".".join(k for k in key[:2] if k) + "".join(f", {n} {v}" for n, v in zip(
                ("concept", "unit"), key[2:]) if v)
            raise ValueError(f"{r['_at']}: a second row for {what} (the first: line {seen[key].rsplit(':', 1)[1]}); "
                             "keep one")
        seen[key] = r["_at"]


VALUE_COLUMNS = ("cdmDatatype", "fkDomain", "fkClass", "plausibleValueLow", "plausibleValueHigh")  # not Yes/No
LEVEL_KEYS = {"Concept_Level": "conceptId", "Field_Level": "cdmFieldName", "Table_Level": "cdmTableName"}


def threshold_file(path: str) -> tuple[str, list[dict[str, str]]]:
    """(level, rows) of a site's own copy of one of DQD's threshold files (DQD's `tableCheckThresholdLoc`,
    `fieldCheckThresholdLoc`, `conceptCheckThresholdLoc`), its level told by its columns. Every `…Threshold` is
    empty, NA or a percent from 0 to 100, and every check column Yes, No or empty; a mistake names the file, the
    line and the column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"DQD threshold file {p}: cannot read it ({e})") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    cols = reader.fieldnames or []
    level = next((lv for lv, key in LEVEL_KEYS.items() if key in cols), None)
    if level is None or "cdmTableName" not in cols:
        raise ValueError(f"{p}: not one of DQD's threshold files (no cdmTableName column; a Table_Level, Field_Level "
                         "or Concept_Level CSV as DQD ships them)")
    rows = []
    after = reader.line_num  # the file's line a record starts on: DQD's texts run over several lines
    for r in reader:
        n, after = after + 1, reader.line_num
        for col in cols:
            v = (r.get(col) or "").strip()
            if col.endswith("Threshold") and v and v != "NA":
                try:
                    ok = 0 <= float(v) <= 100
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"{p}:{n}: {col} must be empty, NA or a percent from 0 to 100, not {v!r}")
            elif col + "Threshold" in cols and col not in VALUE_COLUMNS and v and level != "Concept_Level" \
                    and v.lower() not in ("yes", "no"):
                raise ValueError(f"{p}:{n}: {col} must be Yes, No or empty, not {v!r}")
        rows.append(r | {"_at": f"{p}:{n}"})
    return level, rows


@cache
def check_types(version: str = model.DEFAULT_VERSION) -> dict[str, CheckType]:
    out: dict[str, CheckType] = {}
    for r in dqd_rows(version, "Check_Descriptions"):
        out[r["checkName"].strip()] = CheckType(
            level=r["checkLevel"].strip(),
            name=r["checkName"].strip(),
            description=" ".join(r["checkDescription"].split()),
            context=r["kahnContext"].strip(),
            category=r["kahnCategory"].strip(),
            subcategory=r["kahnSubcategory"].strip(),
            severity=r["severity"].strip(),
            sql_file=r["sqlFile"].strip(),
        )
    return out


# Checks medlake adds to DQD's list (same shape, source "medlake").
MEDLAKE_TYPES = {
    "mappingCoverage": CheckType(
        "FIELD", "mappingCoverage",
        "The number and percent of records in @cdmTableName whose @cdmFieldName is not mapped to a standard, "
        "valid concept (0, NULL or a non-standard concept); coverage is 100 minus this percentage.",
        "Verification", "Completeness", "Mapping", "characterization"),
}


def _yes(v: str | None) -> bool:
    return (v or "").strip().lower() == "yes"


def _num(v: str | None, default: float | None = 0.0) -> float | None:
    v = (v or "").strip()
    if not v or v == "NA":
        return default
    return float(v)


def plausible_value(raw: str, kind: str, today: dt.date | None = None):
    """DQD's plausibleValueLow/High as a Python value. DQD writes SQL Server expressions for dates
    ('19500101' and DATEADD(dd,1,GETDATE())); they become dates relative to `today`."""
    raw = raw.strip()
    today = today or dt.date.today()
    if raw.upper() == "DATEADD(DD,1,GETDATE())":
        return today + dt.timedelta(days=1)
    if raw.upper() == "YEAR(GETDATE())+1":
        return today.year + 1
    if raw.startswith("'") and raw.endswith("'"):
        return dt.datetime.strptime(raw.strip("'"), "%Y%m%d").date()
    value = float(raw)
    if kind in ("date", "datetime"):
        raise ValueError(f"plausible value {raw!r} is not a date")
    return int(value) if value.is_integer() and kind in ("integer", "bigint") else value


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _read(column: str, raw: str, read):
    """A threshold file's value as `read` takes it; a ValueError naming the column and the value otherwise."""
    try:
        return read(raw)
    except ValueError:
        raise ValueError(f"{column} cannot be read: {raw!r} is not what the column holds (DQD's files: "
                         "a number, a date as 'YYYYMMDD', or concept ids separated by commas)") from None


def source_value_of(concept_field: str, fields) -> str | None:
    """The source value field a concept field is mapped from, by the CDM's naming (`X_concept_id` and
    `X_source_concept_id` from `X_source_value`), if the table has it: a non-required concept field left NULL beside
    a source value is unmapped, as DQD 2.7 counts it in `standard/sourceConceptRecordCompleteness`."""
    base = concept_field.removesuffix("_concept_id").removesuffix("_source")
    name = f"{base}_source_value"
    return name if concept_field.endswith("_concept_id") and name in fields else None


def _fill(text: str, **kw) -> str:
    for k, v in kw.items():
        text = text.replace(f"@{k}", str(v))
    return text


@cache
def checks(version: str = model.DEFAULT_VERSION, today: dt.date | None = None) -> tuple[Check, ...]:
    """Every DQD check for a CDM version (plus medlake's mapping coverage), in a stable order."""
    return build_checks(version, today)


def build_checks(version: str, today: dt.date | None = None, files: tuple[str, ...] = ()) -> tuple[Check, ...]:
    """`checks`, read from the files each time: `files` are a site's own copies of DQD's threshold files
    (`threshold_file`), each replacing medlake's copy of its level: the rules only DQD's files have (which
    plausibility checks, their values), every check's threshold and notes. The checks the spec decides
    (isRequired, isPrimaryKey, isForeignKey, …) stay as the spec says."""
    cdm = model.load(version)
    types = check_types(version)
    out: list[Check] = []
    row: dict = {}  # the threshold file's row being read: its notes, and where a mistake is

    def add(name, table, fld=None, threshold=0.0, concept=None, unit=None, params=(), source=None, desc=None,
            **fill):
        t = types.get(name) or MEDLAKE_TYPES[name]
        desc = desc or _fill(t.description, cdmTableName=table.upper(), cdmFieldName=(fld or "").upper(), **fill)
        level = "CONCEPT" if concept is not None else t.level
        source = source or ("dqd" if name in types else "medlake")
        if source == "medlake" and name in types:
            desc += " (medlake rule, beyond DQD)"
        notes = (row.get(name + "Notes") or "").strip() if source == "dqd" else ""
        out.append(Check(name, level, table, fld, concept, unit, float(threshold), t.category, t.subcategory,
                         t.context, t.severity, desc, tuple(params), source, "" if notes == "NA" else notes))

    try:  # a value DQD's files or the site's copy hold that is not what its column needs: where it is
        # -- table level ---------------------------------------------------------------------------------------
        tl = {r["cdmTableName"].strip().lower(): r for r in dqd_rows(version, "Table_Level", files)}
        for table in cdm.tables:
            r = row = tl.get(table.name, {})
            add("cdmTable", table.name)
            for name in ("measurePersonCompleteness", "measureConditionEraCompleteness",
                         "measureObservationPeriodOverlap"):
                if name in types and _yes(r.get(name)):
                    add(name, table.name, threshold=_num(r.get(name + "Threshold")))

        # -- field level ---------------------------------------------------------------------------------------
        fl = {(r["cdmTableName"].strip().lower(), r["cdmFieldName"].strip().lower()): r
              for r in dqd_rows(version, "Field_Level", files)}
        for table in cdm.tables:
            for f in table.fields:
                r = row = fl.get((table.name, f.name), {})
                thr = lambda name: _num(r.get(name + "Threshold"))  # noqa: E731
                add("cdmField", table.name, f.name)
                if f.required:  # spec wins
                    add("isRequired", table.name, f.name, thr("isRequired"))
                if f.kind in ("integer", "bigint"):
                    add("cdmDatatype", table.name, f.name, thr("cdmDatatype"))
                if f.primary_key:
                    add("isPrimaryKey", table.name, f.name, thr("isPrimaryKey"))
                if f.fk_table:
                    fk = (("fk_table", f.fk_table), ("fk_field", f.fk_field or f.fk_table + "_id"))
                    add("isForeignKey", table.name, f.name, thr("isForeignKey"), params=fk, fkTableName=f.fk_table.upper())
                    if f.fk_domain and f.fk_table == "concept":
                        add("fkDomain", table.name, f.name, thr("fkDomain"), params=(("domain", f.fk_domain),),
                            fkDomain=f.fk_domain)
                    if f.fk_class and f.fk_table == "concept":
                        add("fkClass", table.name, f.name, thr("fkClass"), params=(("class", f.fk_class),),
                            fkClass=f.fk_class)
                if not r:
                    continue  # the plausibility rules below exist only in DQD's files
                if f.fk_table == "concept" and _yes(r.get("isStandardValidConcept")):
                    add("isStandardValidConcept", table.name, f.name, thr("isStandardValidConcept"))
                if _yes(r.get("measureValueCompleteness")):
                    add("measureValueCompleteness", table.name, f.name, thr("measureValueCompleteness"))
                recorded = (("required", f.required), ("source_value", source_value_of(f.name, table.field_names)))
                if _yes(r.get("standardConceptRecordCompleteness")):
                    add("standardConceptRecordCompleteness", table.name, f.name,
                        thr("standardConceptRecordCompleteness"), params=recorded)
                    add("mappingCoverage", table.name, f.name, 100)
                if _yes(r.get("sourceConceptRecordCompleteness")):
                    add("sourceConceptRecordCompleteness", table.name, f.name, thr("sourceConceptRecordCompleteness"),
                        params=recorded)
                std = (r.get("standardConceptFieldName") or "").strip().lower()
                if _yes(r.get("sourceValueCompleteness")) and std in table.field_names:
                    add("sourceValueCompleteness", table.name, f.name, thr("sourceValueCompleteness"),
                        params=(("standard_field", std),))
                for bound in ("Low", "High"):
                    raw = (r.get(f"plausibleValue{bound}") or "").strip()
                    if raw:
                        value = _read(f"plausibleValue{bound}", raw, lambda v: plausible_value(v, f.kind, today))
                        add(f"plausibleValue{bound}", table.name, f.name, thr(f"plausibleValue{bound}"),
                            params=(("value", value),), **{f"plausibleValue{bound}": value})
                if _yes(r.get("plausibleTemporalAfter")):
                    at = r["plausibleTemporalAfterTableName"].strip().lower()
                    af = r["plausibleTemporalAfterFieldName"].strip().lower()
                    if at in cdm.table_names and af in cdm.table(at).field_names:
                        add("plausibleTemporalAfter", table.name, f.name, thr("plausibleTemporalAfter"),
                            params=(("after_table", at), ("after_field", af)),
                            plausibleTemporalAfterTableName=at.upper(), plausibleTemporalAfterFieldName=af.upper())
                for name in ("plausibleDuringLife", "plausibleAfterBirth", "plausibleBeforeDeath", "withinVisitDates"):
                    if name in types and _yes(r.get(name)):
                        if name == "withinVisitDates" and "visit_occurrence_id" not in table.field_names:
                            continue
                        if name != "withinVisitDates" and "person_id" not in table.field_names and table.name != "person":
                            continue
                        add(name, table.name, f.name, thr(name))
                if _yes(r.get("plausibleStartBeforeEnd")):
                    end = r["plausibleStartBeforeEndFieldName"].strip().lower()
                    if end in table.field_names:
                        add("plausibleStartBeforeEnd", table.name, f.name, thr("plausibleStartBeforeEnd"),
                            params=(("end_field", end),), plausibleStartBeforeEndFieldName=end.upper())

        # -- concept level -------------------------------------------------------------------------------------
        ranges = plausible_values()
        extra_units: dict[int, set[int]] = {}
        for r in ranges:
            extra_units.setdefault(r["concept_id"], set()).add(r["unit_concept_id"])
        # a site's own Concept_Level file is its lists as it wrote them (DQD's exactly: give DQD's file)
        own = _site_rows("Concept_Level", files)
        unit_rules: set[int] = set()
        for r in own if own is not None else dqd_rows(version, "Concept_Level"):
            row = r
            table, fld = r["cdmTableName"].strip().lower(), (r.get("cdmFieldName") or "").strip().lower()
            if table not in cdm.table_names or fld not in cdm.table(table).field_names:
                continue
            concepts = _read("conceptId", r["conceptId"], _ids)  # DQD lists a few as "a, b"
            concept = concepts[0]
            unit = _read("unitConceptId", r["unitConceptId"], int) if (r.get("unitConceptId") or "").strip() else None
            fill = dict(conceptId=concept, conceptName=r["conceptName"].strip())
            for bound in ("Low", "High"):
                raw = (r.get(f"plausibleValue{bound}") or "").strip()
                if raw and unit is not None:
                    add(f"plausibleValue{bound}", table, fld, _num(r.get(f"plausibleValue{bound}Threshold")),
                        concept, unit, params=(("value", _read(f"plausibleValue{bound}", raw, float)),
                                               ("concept_ids", concepts)),
                        **{f"plausibleValue{bound}": raw}, **fill)
            for name in ("plausibleGender", "plausibleGenderUseDescendants"):
                g = (r.get(name) or "").strip()
                if g:
                    gid = {"male": 8507, "female": 8532}.get(g.lower())
                    if gid is None:
                        raise ValueError(f"{name} must be Male or Female, not {g!r}")
                    add(name, table, fld, _num(r.get(name + "Threshold")), concept,
                        params=(("gender_concept_id", gid), ("concept_ids", concepts)), **{name: g}, **fill)
            units = (r.get("plausibleUnitConceptIds") or "").strip()
            if units and "unit_concept_id" in cdm.table(table).field_names:
                ids = _read("plausibleUnitConceptIds", units, _ids)
                more: list[int] = []
                if table == "measurement":  # medlake's SI units for the concept join DQD's (mostly US) list
                    more = [] if own is not None else sorted(set().union(*(extra_units.get(c, set()) for c in concepts)) - set(ids))
                    unit_rules.update(concepts)
                add("plausibleUnitConceptIds", table, fld, _num(r.get("plausibleUnitConceptIdsThreshold")), concept,
                    params=(("units", ids + tuple(more)), ("concept_ids", concepts)),
                    plausibleUnitConceptIds=",".join(str(u) for u in ids + tuple(more)), **fill)
                if more:  # said in the check (and in dqd.json's description): not DQD's result where they occur
                    out[-1] = replace(out[-1], description=out[-1].description + (
                        f" (DQD's list {','.join(map(str, ids))}, with medlake's SI unit(s) "
                        f"{','.join(map(str, more))}; DQD's exactly: --dqd-thresholds with DQD's Concept_Level file)"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{row.get('_at', 'DQD threshold file')}: {e}") from None

    # -- beyond DQD: medlake's physiologic value ranges per measurement concept and unit ----------------------
    if "measurement" in cdm.table_names:
        for r in ranges:
            for bound, word in (("Low", "below"), ("High", "above")):
                value = r[f"plausible_value_{bound.lower()}"]
                desc = (f"The number and percent of records with MEASUREMENT_CONCEPT_ID {r['concept_id']} "
                        f"({r['concept_name']}) and UNIT_CONCEPT_ID {r['unit_concept_id']} ({r['ucum']}) whose "
                        f"VALUE_AS_NUMBER is {word} the physiologic limit {value:g}")
                add(f"plausibleValue{bound}", "measurement", "measurement_concept_id", RANGE_THRESHOLD,
                    r["concept_id"], r["unit_concept_id"],
                    params=(("value", value), ("concept_ids", (r["concept_id"],))), source="medlake", desc=desc)
        for cid in sorted(extra_units):
            if cid not in unit_rules:  # a concept DQD has no unit list for: medlake's units are the list
                ids = tuple(sorted(extra_units[cid]))
                name = next(r["concept_name"] for r in ranges if r["concept_id"] == cid)
                add("plausibleUnitConceptIds", "measurement", "measurement_concept_id", 5.0, cid,
                    params=(("units", ids), ("concept_ids", (cid,))), source="medlake",
                    plausibleUnitConceptIds=",".join(str(u) for u in ids), conceptId=cid, conceptName=name)
    return tuple(out)


# DQD's threshold for its concept-level value rules (OMOP_CDMv5.4_Concept_Level.csv: 5%).
RANGE_THRESHOLD = 5.0


@cache
def plausible_values() -> tuple[dict, ...]:
    """medlake's physiologic value ranges per measurement concept and unit (`plausible_values.csv`, described
    in docs/quality.md): a value outside is not a human measurement, or is in another unit."""
    text = resources.files("medlake.quality").joinpath("plausible_values.csv").read_text(encoding="utf-8")
    out = []
    for n, r in enumerate(csv.DictReader(text.splitlines(keepends=True)), 2):
        try:
            out.append({"concept_id": int(r["measurement_concept_id"]), "concept_name": r["concept_name"],
                        "loinc": r["loinc"], "unit_concept_id": int(r["unit_concept_id"]), "ucum": r["ucum"],
                        "plausible_value_low": float(r["plausible_value_low"]),
                        "plausible_value_high": float(r["plausible_value_high"])})
        except (TypeError, ValueError) as e:
            raise ValueError(f"plausible_values.csv:{n}: {e}") from e
    return tuple(out)


def check_type_of(c: Check) -> CheckType:
    return check_types().get(c.name) or MEDLAKE_TYPES[c.name]


# -- where DQD's files and the CDM spec disagree -----------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    table: str
    field: str
    attribute: str
    dqd: str
    spec: str
    resolution: str = field(default="the spec wins")


def dqd_vs_spec(version: str) -> list[Difference]:
    """Every place where DQD's Field_Level file disagrees with the OMOP CDM spec of the same version."""
    cdm = model.load(version)
    out: list[Difference] = []
    dqd = {(r["cdmTableName"].strip().lower(), r["cdmFieldName"].strip().lower()): r
           for r in dqd_rows(version, "Field_Level")}
    spec = {(t.name, f.name): f for t in cdm.tables for f in t.fields}
    for key, r in sorted(dqd.items()):
        f = spec.get(key)
        if f is None:
            out.append(Difference(*key, "field", "present", "absent", "ignored: no such field in the spec"))
            continue
        pairs = [
            ("isRequired", _yes(r["isRequired"]), f.required),
            ("cdmDatatype", r["cdmDatatype"].strip().lower(), f.datatype),
            ("isPrimaryKey", _yes(r["isPrimaryKey"]), f.primary_key),
            ("isForeignKey", _yes(r["isForeignKey"]), bool(f.fk_table)),
            ("fkTableName", (r["fkTableName"].strip().lower() or None) if _yes(r["isForeignKey"]) else None,
             f.fk_table),
            ("fkDomain", r["fkDomain"].strip() or None, f.fk_domain),
            ("fkClass", r["fkClass"].strip() or None, f.fk_class),
        ]
        for attr, d, s in pairs:
            if d != s:
                out.append(Difference(*key, attr, _show(d), _show(s)))
    for key in sorted(set(spec) - set(dqd)):
        out.append(Difference(*key, "field", "absent", "present",
                              "checked from the spec only (no DQD plausibility rules or thresholds)"))
    tables = {r["cdmTableName"].strip().lower() for r in dqd_rows(version, "Table_Level")}
    for t in sorted(tables - set(cdm.table_names)):
        out.append(Difference(t, "", "table", "present", "absent", "ignored: no such table in the spec"))
    for t in sorted(set(cdm.table_names) - tables):
        out.append(Difference(t, "", "table", "absent", "present", "checked from the spec with default thresholds"))
    return out


def _show(v) -> str:
    if isinstance(v, bool):
        return "Yes" if v else "No"
    return "" if v is None else str(v)


def differences_markdown() -> str:
    """The text of docs/dqd-vs-spec.md (a test keeps the file equal to this)."""
    lines = [
        "# DQD threshold files vs the OMOP CDM spec",
        "",
        "Generated by `medlake.quality.checks.differences_markdown()`; a test keeps this file current.",
        "Where OHDSI DataQualityDashboard's `Field_Level`/`Table_Level` files disagree with the OMOP CDM spec",
        "CSVs of the same version, medlake follows the spec: required fields, datatypes, primary keys and foreign",
        "keys (table, domain, class) come from the spec; DQD contributes thresholds and plausibility rules.",
        "",
    ]
    for version in model.VERSIONS:
        diffs = dqd_vs_spec(version)
        lines += [f"## CDM v{version}: {len(diffs)} difference(s)", "",
                  "| table | field | attribute | DQD | spec | resolution |", "|---|---|---|---|---|---|"]
        lines += [f"| {d.table} | {d.field} | {d.attribute} | {d.dqd} | {d.spec} | {d.resolution} |" for d in diffs]
        lines.append("")
    lines += ["## medlake's additions to DQD's concept-level rules", "",
              "DQD's `plausibleUnitConceptIds` lists come mostly from US data and lack the SI units Chinese (and most",
              "non-US) laboratories report in. Where medlake's physiologic value ranges",
              "(`src/medlake/quality/plausible_values.csv`, checks `plausibleValueLow/High` with source `medlake`) name",
              "a unit for a concept DQD lists units for, that unit joins DQD's list (same on v5.4 and v5.3), and the",
              "check's description says so (DQD's result differs where rows have it). A site that wants DQD's lists",
              "exactly gives DQD's Concept_Level file with `--dqd-thresholds` (its own copy is read as written).", "",
              "| concept | name | DQD's units | added by medlake |", "|---|---|---|---|"]
    ranges = plausible_values()
    for r in dqd_rows("5.4", "Concept_Level"):
        units = (r.get("plausibleUnitConceptIds") or "").strip()
        if r["cdmTableName"].strip().lower() != "measurement" or not units:
            continue
        ids = [int(c) for c in r["conceptId"].split(",")]
        dqd = {int(u) for u in units.split(",")}
        added = sorted({x["unit_concept_id"] for x in ranges if x["concept_id"] in ids} - dqd)
        if added:
            ucum = {x["unit_concept_id"]: x["ucum"] for x in ranges}
            lines.append(f"| {ids[0]} | {r['conceptName'].strip()} | {units} | "
                         f"{', '.join(f'{u} ({ucum[u]})' for u in added)} |")
    lines.append("")
    return "\n".join(lines)
