"""`medlake trace TABLE ID`: the chain from a CDM row back to the landing receipt it came from."""
from __future__ import annotations

from medlake.cdm import model
from medlake.engines.base import Engine


def trace(engine: Engine, table: str, row_id: int, landing=None) -> list[dict]:
    """Lineage of one CDM row (one entry per source record), with its landing receipt when `landing` is given."""
    table = table.lower()
    try:
        model.load("5.4").table(table)
    except KeyError as e:
        raise ValueError(f"{table!r} is not an OMOP CDM v5.4 table") from e
    if "cdm_lineage" not in engine.tables():
        raise ValueError("this store has no lineage yet: run `medlake transform` first")
    rows = engine.query(
        "SELECT cdm_table, row_id, person_id, rule, source, record_key, message_id, record_location, receipt_seq, "
        "landing_sha256, code_system, code, concept_id, run_id FROM cdm_lineage WHERE cdm_table = ? AND row_id = ? "
        "ORDER BY source, record_key", [table, int(row_id)]).to_pylist()
    if not rows:
        raise ValueError(f"no lineage for {table} {row_id}: not a row written by `medlake transform`")
    persons = {r["person_id"] for r in rows if r["person_id"] is not None}
    if table != "person" and persons and "person" in engine.tables():
        # a person without a PERSON row: no record of its demographics was staged (what isForeignKey reports)
        known = {r["person_id"] for r in engine.query(
            f"SELECT person_id FROM person WHERE person_id IN ({', '.join('?' * len(persons))})",
            sorted(persons)).to_pylist()}
        for r in rows:
            r["person_row"] = r["person_id"] is None or r["person_id"] in known
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
