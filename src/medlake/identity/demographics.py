"""What the CDM may know of a person from the identities that move into the vault: sex, year and month of birth.

`vault_staging` nulls birth dates and sex in staging (they are identifying there, beside names and numbers).
The PERSON table still needs gender and year of birth, so, while the values are in this process's memory on
their way into the vault, the coarse part is kept per source identity in `identity_demographics`
(source, source_id, gender_source_value, year_of_birth, month_of_birth). The day of birth stays in the vault.
The transform takes each person's values by majority over the identities `empi_person_map` gives it, so the
table stays right when person_ids change (re-clustering, decisions) without touching the vault again.
"""
from __future__ import annotations

import re

import pyarrow as pa

TABLE = "identity_demographics"
SCHEMA = pa.schema([("source", pa.string()), ("source_id", pa.string()), ("gender_source_value", pa.string()),
                    ("year_of_birth", pa.int32()), ("month_of_birth", pa.int32())])
_SEX = {"m": "M", "male": "M", "男": "M", "1": "M", "f": "F", "female": "F", "女": "F", "2": "F",
        "o": "O", "other": "O", "a": "O", "u": "U", "unknown": "U", "0": "U", "9": "U"}
_YM = re.compile(r"^\s*(\d{4})[-/.]?(\d{2})?")


def sex_code(value: str | None) -> str | None:
    """M, F, O or U from HL7 (M/F/O/U/A), FHIR (male/female/other/unknown), GB/T 2261.1 (1/2/0/9) or 男/女."""
    return _SEX.get(str(value).strip().lower()) if value not in (None, "") else None


def year_month(value: str | None) -> tuple[int | None, int | None]:
    m = _YM.match(str(value)) if value else None
    if not m:
        return None, None
    month = int(m.group(2)) if m.group(2) and 1 <= int(m.group(2)) <= 12 else None
    return int(m.group(1)), month


def record(engine, identities: list[dict]) -> int:
    """Keep sex and year/month of birth of these identities: a value given replaces the one kept before, a value not
    given keeps it — a later `empi run` sees the identities whose staging rows it already cleared, without them."""
    if not identities:
        return 0
    if TABLE not in engine.tables():
        engine.execute(f"CREATE TABLE {TABLE} (source VARCHAR NOT NULL, source_id VARCHAR NOT NULL, "
                       "gender_source_value VARCHAR, year_of_birth INTEGER, month_of_birth INTEGER)")
    rows: dict[tuple[str, str], tuple] = {}

    def keep(k, sex, y, m):  # year and month come together, from one record
        was = rows.get(k)
        rows[k] = (sex, y, m) if was is None else (sex or was[0], *((y, m) if y is not None else was[1:]))
    new = []
    for r in identities:
        new.append(((r["source"], str(r["source_id"])), sex_code(r.get("sex")), *year_month(r.get("birth_date"))))
    keys = list(dict.fromkeys(k for k, *_ in new))
    with engine.transaction():  # the keys go through a plain work table: Spark has no temporary tables
        engine.execute("DROP TABLE IF EXISTS identity_demographics_new")
        engine.execute("CREATE TABLE identity_demographics_new (source VARCHAR, source_id VARCHAR)")
        engine.load_arrow("identity_demographics_new", pa.table([[k[0] for k in keys], [k[1] for k in keys]],
                                                                 names=["source", "source_id"]))
        for o in engine.query(f"SELECT d.* FROM {TABLE} d JOIN identity_demographics_new n ON n.source = d.source "
                              "AND n.source_id = d.source_id").to_pylist():
            keep((o["source"], o["source_id"]), o["gender_source_value"], o["year_of_birth"], o["month_of_birth"])
        for k, sex, y, m in new:
            keep(k, sex, y, m)
        data = pa.table([[k[0] for k in keys], [k[1] for k in keys], *([rows[k][i] for k in keys] for i in range(3))],
                        schema=SCHEMA)
        engine.execute(f"DELETE FROM {TABLE} WHERE source || '|' || source_id IN "
                       "(SELECT source || '|' || source_id FROM identity_demographics_new)")
        engine.execute("DROP TABLE identity_demographics_new")
        engine.load_arrow(TABLE, data)
    return data.num_rows


def person_sql() -> str:
    """One row per person_id: the most frequent non-null value of each field over the person's identities
    (ties broken by the smallest value, so every engine gives the same answer)."""
    cols = ("gender_source_value", "year_of_birth", "month_of_birth")
    ctes = []
    for c in cols:
        ctes.append(f"""{c}_votes AS (
    SELECT person_id, v, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY n DESC, v) AS rn FROM (
        SELECT m.person_id, d.{c} AS v, count(*) AS n
        FROM empi_person_map m JOIN {TABLE} d ON d.source = m.source AND d.source_id = m.source_id
        WHERE d.{c} IS NOT NULL GROUP BY m.person_id, d.{c}) AS t)""")
    joins = "\n".join(f"LEFT JOIN {c}_votes ON {c}_votes.person_id = p.person_id AND {c}_votes.rn = 1" for c in cols)
    return ("WITH " + ",\n".join(ctes) + ",\npersons AS (SELECT DISTINCT person_id FROM empi_person_map)\n"
            f"SELECT p.person_id, {', '.join(f'{c}_votes.v AS {c}' for c in cols)}\nFROM persons p\n{joins}")
