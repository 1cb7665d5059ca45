"""The mapping rules keep identifying and free-text staging values out of the CDM, whatever the EMPI has moved."""
import dataclasses
import re

from medlake.identity.staging import KEEP, _schemas
from medlake.sources.records import is_identifying
from medlake.transform import rules

# Rule fields that decide which rows are read and in which order, never written to a CDM column.
NOT_WRITTEN = {"where", "where_if", "order"}
# The only places a marked column is read for a CDM column, each with what reaches the CDM.
ALLOWED = {
    ("fhir.patient", "birth"): "year and month of birth (the day stays out: compile.person_insert_sql)",
    ("hl7.patient", "birth"): "year and month of birth",
    ("hl7.observation", "values.value_source_value"): "OBX-5 as written, only when it is a number",
}


def _marked(table: str) -> set[str]:
    schema = _schemas().get(table)
    return {f.name for f in schema or [] if is_identifying(f) or (f.metadata or {}).get(b"free_text") == b"true"}


def _expressions(value, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _expressions(v, f"{path}.{k}")
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _expressions(v, path)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _expressions(getattr(value, f.name), f"{path}.{f.name}")


def reads_of_marked_columns() -> dict[tuple[str, str], set[str]]:
    """(rule, field) -> the identifying or free-text staging columns its expression reads (source ids excepted)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules.ALL:
        marked = _marked(rule.staging) - KEEP
        for f in dataclasses.fields(rule):
            if f.name in {"name", "staging", "table", "default_table"} | NOT_WRITTEN:
                continue
            for path, expr in _expressions(getattr(rule, f.name), f.name):
                cols = set(re.findall(r"\bs\.(\w+)", expr)) & marked
                if cols:
                    out.setdefault((rule.name, path), set()).update(cols)
    return out


def test_no_rule_writes_an_identifying_or_free_text_staging_column_into_the_cdm():
    reads = reads_of_marked_columns()
    assert set(reads) - set(ALLOWED) == set(), "a rule reads identifying or free text into the CDM"
    assert reads[("fhir.patient", "birth")] == {"birth_date"} and reads[("hl7.patient", "birth")] == {"birth_date"}
    assert set(ALLOWED) <= set(reads), "an allowed read is gone: drop it from ALLOWED"
    obx = next(r for r in rules.EVENTS if r.name == "hl7.observation").values["value_source_value"]
    assert "CASE WHEN s.value_number IS NOT NULL THEN s.value_text END" in obx


def test_the_scan_finds_a_note_text_read():
    """The scan sees a rule that would write a note's text (as the NOTE rules did before 2026-12-07)."""
    doc = next(r for r in rules.TABLES if r.name == "hl7.document")
    bad = dataclasses.replace(doc, columns={**doc.columns, "note_text": "COALESCE(s.text, '')"})
    saved = rules.ALL
    try:
        rules.ALL = [bad]
        assert reads_of_marked_columns() == {("hl7.document", "columns.note_text"): {"text"}}
    finally:
        rules.ALL = saved
