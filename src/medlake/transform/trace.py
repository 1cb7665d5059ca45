"""`medlake trace TABLE ID`: the chain from a CDM row back to the landing receipt it came from."""
from __future__ import annotations

from medlake.cdm import model, store
from medlake.engines.base import Engine
from medlake.transform import rules as r
from medlake.transform.compile import EMPI_IDS, read_sql
from medlake.transform.derived import FROM_EVENTS


def trace(engine: Engine, table: str, row_id: int, landing=None) -> list[dict]:
    """Lineage of one CDM row (one entry per source record), with its landing receipt when `landing` is given; of a
    row computed from a person's events (derived.FROM_EVENTS), one entry marked `derived`: it has no source record."""
    table = table.lower()
    try:
        spec = model.load("5.4").table(table)
    except KeyError as e:
        raise ValueError(f"{table!r} is not an OMOP CDM v5.4 table") from e
    tables = engine.tables()
    if "cdm_lineage" not in tables:
        if store.INFO_TABLE not in tables:
            raise ValueError("this store's CDM was not made by medlake: its rows have no lineage to trace (medlake "
                             "trace follows the rows `medlake transform` writes); list a check's rows with `medlake "
                             "quality show CHECK_ID --rows` and look them up in the ETL that loaded them")
        raise ValueError("this store has no lineage yet: run `medlake transform` first")
    rows = engine.query(
        "SELECT cdm_table, row_id, person_id, rule, source, record_key, message_id, record_location, receipt_seq, "
        "landing_sha256, code_system, code, concept_id, run_id FROM cdm_lineage WHERE cdm_table = ? AND row_id = ? "
        "ORDER BY source, record_key", [table, int(row_id)]).to_pylist()
    if not rows:
        got = engine.query(f"SELECT person_id FROM {table} WHERE {spec.primary_key[0]} = ?",
                           [int(row_id)]).to_pylist() if table in FROM_EVENTS else []
        if got:  # computed from the person's events: no source record of its own
            return [{"cdm_table": table, "row_id": int(row_id), "person_id": got[0]["person_id"], "derived": True}]
        raise ValueError(f"no lineage for {table} {row_id}: not a row written by `medlake transform`")
    for r in rows:
        run = engine.query("SELECT started_at FROM transform_run WHERE run_id = ?", [r["run_id"]]).to_pylist()
        r["run_at"] = run[0]["started_at"] if run else None
        if landing is not None:
            found = next((x for x in landing.receipts(r["source"], after_seq=r["receipt_seq"] - 1,
                                                       include_duplicates=True) if x.seq == r["receipt_seq"]), None)
            r["receipt"] = None if found is None else {
                "seq": found.seq, "original_name": found.original_name, "received_at": found.received_at,
                "batch": found.batch, "size": found.size, "sha256": found.sha256}
    return rows


def dangling(engine: Engine, table: str, row_id: int) -> list[tuple[str, int, str]]:
    """(field, value, table it names) of each reference of a CDM row to a CDM row that does not exist (what
    isForeignKey counts; references to the vocabulary are not followed)."""
    cdm = model.load("5.4")
    spec = cdm.table(table.lower())
    tables = {t.lower() for t in engine.tables()} & {t.name for t in cdm.tables if t.schema == "CDM"}
    refs = [f for f in spec.fields if f.fk_table in tables and f.fk_field]
    if not refs or not spec.primary_key:
        return []
    got = engine.query(f"SELECT {', '.join(f.name for f in refs)} FROM {spec.name} WHERE {spec.primary_key[0]} = ?",
                       [int(row_id)]).to_pylist()
    out = []
    for f in refs:
        value = got[0][f.name] if got else None
        if value is not None and not engine.query(f"SELECT count(*) AS n FROM {f.fk_table} WHERE {f.fk_field} = ?",
                                                  [value]).to_pylist()[0]["n"]:
            out.append((f.name, value, f.fk_table))
    return out


def patient_ids(engine: Engine, person_id: int) -> list[str]:
    """The source patient ids a person is known by: the patient that one record of each rule and source of the
    person's CDM rows names (an MRN, a FHIR Patient id), and the ids and MRNs the EMPI links to it. What a
    quarantined record of that patient would carry (`Quarantine.naming`)."""
    tables = set(engine.tables())
    by_name = {x.name: x for x in r.ALL}
    ids: set[str] = set()
    seen = engine.query("SELECT rule, source, min(record_key) AS record_key FROM cdm_lineage WHERE person_id = ? "
                        "GROUP BY rule, source", [int(person_id)]).to_pylist()
    for g in seen:
        rule = by_name.get(g["rule"])
        if rule is None or rule.person is None or rule.staging not in tables:
            continue
        got = engine.query(f"SELECT DISTINCT CAST({rule.person} AS VARCHAR) AS p FROM {read_sql(rule)} s "
                           f"WHERE s.source = ? AND ({rule.key}) = ?", [g["source"], g["record_key"]]).to_pylist()
        ids |= {x["p"] for x in got if x["p"]}
    if "empi_alias" in tables:  # (the transform makes it beside empi_person_map)
        ids |= {x["source_id"] for x in engine.query(f"SELECT DISTINCT source_id FROM {EMPI_IDS} AS m WHERE "
                                                      "person_id = ?", [int(person_id)]).to_pylist()}
    return sorted(ids)
