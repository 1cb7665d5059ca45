"""Compile checks to set-based SQL, written once in DuckDB's dialect (engines transpile it).

For one table, every field-level check becomes a pair of aggregates (violations, denominator) in ONE query
over the table, with one LEFT JOIN per referenced table (concept per concept field, person, death, visit…).
Primary keys take one GROUP BY query, concept-level checks one query per rule kind (the rules travel as
literal rows and are joined), table-level checks one query each. `Item` is the unit both for the batched
query and for the one-query-per-check baseline, so both run exactly the same conditions.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from medlake.engines.base import Shapes
from medlake.quality.checks import Check

INTEGRAL = ("BIGINT", "INTEGER", "INT", "INT4", "INT8", "SMALLINT", "HUGEINT", "TINYINT", "LONG", "SHORT")
FLOATING = ("DOUBLE", "FLOAT", "REAL", "DOUBLE PRECISION", "DECIMAL", "NUMERIC", "FLOAT8", "FLOAT4")
TEXTUAL = ("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "NVARCHAR")  # (prefixes: CHARACTER VARYING too)


class NotApplicable(Exception):
    """A check cannot apply here (a field or referenced table is absent or empty); the message says why."""


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dt.datetime):  # (a TOML date-time: a time of day kept; one with an offset, in UTC)
        v = v.astimezone(dt.timezone.utc).replace(tzinfo=None) if v.tzinfo else v
        return f"TIMESTAMP '{v.isoformat(sep=' ')}'"
    if isinstance(v, dt.date):
        return f"DATE '{v.isoformat()}'"
    return "'" + str(v).replace("'", "''") + "'"


# in an Item's `needs`: it reads the clock — the date (a site check's `current_date`: its result holds for the day)
# or the time (`now()`, `current_timestamp`: its result holds for no later run)
CLOCK, NOW = "current_date", "current_timestamp"


@dataclass
class Item:
    """One check as SQL: aggregates over `FROM <table> AS t <joins>` (or a whole query of its own)."""

    check: Check
    num: str  # aggregate expression: violating rows
    den: str  # aggregate expression: denominator
    joins: tuple[str, ...] = ()  # aliases of the joins it needs
    where: str | None = None  # condition of a violating row, for examples
    needs: tuple[str, ...] = ()  # other tables it reads (for incremental re-checks)
    den_where: str | None = None  # condition of a denominator row (None: every row)
    grouped: bool = False  # reads only its own field and concept: can run on the table grouped by value
    group_cols: tuple[str, ...] = ()  # other columns it reads, when grouped
    weighted: bool = True  # grouped: num/den conditions weighted by group size (False: num/den as they are)


BIRTH_COLUMNS = {"birth_datetime": "TIMESTAMP", "year_of_birth": "INTEGER", "month_of_birth": "INTEGER",
                 "day_of_birth": "INTEGER"}  # the person fields a birth is read from


@dataclass
class Context:
    """What a table looks like in the store, and the stores' other tables (for joins)."""

    table: str
    columns: dict[str, str]  # name -> engine type (upper)
    present: dict[str, int]  # every table in the store -> row count (-1 if not counted)
    id_column: str | None
    joins: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> (join SQL, table it reads)
    shapes: Shapes = field(default_factory=Shapes)  # the query shapes the engine runs faster (engines/base.py)
    person_columns: tuple[str, ...] | None = None  # the person table's columns (None: the spec's)
    unique: Callable[[str, str], bool] = lambda table, key: True  # is a joined table's key unique (the runner asks the store)

    def has(self, table: str) -> bool:
        return self.present.get(table, 0) != 0

    def need_table(self, table: str, what: str) -> None:
        if table not in self.present:
            raise NotApplicable(f"{table} table absent ({what})")
        if self.present[table] == 0:
            raise NotApplicable(f"{table} table empty ({what})")

    def need_column(self, name: str) -> str:
        if name not in self.columns:
            raise NotApplicable(f"field {self.table}.{name} absent")
        return f"t.{q(name)}"

    # -- joins -------------------------------------------------------------------------------------------
    def fk(self, fld: str, table: str, key: str) -> str:
        if table == "concept":
            self.need_table(table, "vocabulary not loaded")
        elif table not in self.present:  # an empty referenced table is checked: every value then violates
            raise NotApplicable(f"{table} table absent (referenced by {self.table}.{fld})")
        alias = f"fk_{fld}"
        self.joins[alias] = (f"LEFT JOIN {self.target(table, key)} AS {alias} ON t.{q(fld)} = {alias}.{q(key)}", table)
        return alias

    def target(self, table: str, key: str) -> str:
        """A table to join by `key`: itself, or, when the key is not unique there (its isPrimaryKey fails), one
        row per key (`one_per_key`), so that a joined row counts once in every check. The vocabulary is taken as
        it is (concept_id is unique in every Athena download; testing 5M ids would cost every run); the concept
        checks of a table read it once per concept (`grouped_sql`)."""
        if table == "concept" or self.unique(table, key):
            return q(table)
        return one_per_key(table, key, self.person_columns)

    def join_sql(self, aliases, *reads: str | None) -> str:
        """The joins `aliases` name, for a statement whose conditions are `reads`: the person table with each
        birth as a date (PERSON) where the statement reads that birth, else as it is (a query of one check, as
        DQD issues it, pays for no column it does not read; 1-2 ms a query on DuckDB)."""
        text = " ".join(r for r in reads if r)
        out = []
        for a in aliases:
            sql, table = self.joins[a]
            if table == "person" and (f"{a}.birth_date__" in text or f"{a}.birth_key__" in text):
                sql = sql.replace(f"LEFT JOIN {q('person')} ", f"LEFT JOIN {person_sql(self.person_columns)} ", 1)
            out.append(sql)
        return " ".join(out)

    def person(self) -> str:
        if self.table == "person":
            return "t"
        self.need_column("person_id")
        return self.fk("person_id", "person", "person_id")

    def birth(self) -> str:
        """The person table's alias, for a check of a date against each person's birth; NotApplicable when the
        person table has no field a birth can be read from."""
        p = self.person()
        if p != "t" and self.person_columns is not None and not {"year_of_birth", "birth_datetime"} & set(
                self.person_columns):
            raise NotApplicable("fields person.year_of_birth and person.birth_datetime absent")
        return p

    def need_person_column(self, name: str) -> None:
        if self.table != "person" and self.person_columns is not None and name not in self.person_columns:
            raise NotApplicable(f"field person.{name} absent")

    def death(self) -> str:
        if "death" not in self.present:
            raise NotApplicable("death table absent")
        self.need_column("person_id")
        self.joins["dth"] = (
            "LEFT JOIN (SELECT person_id, min(death_date) AS death_date FROM death GROUP BY person_id) AS dth "
            "ON t.person_id = dth.person_id", "death")
        return "dth"


def sum_if(cond: str) -> str:
    return f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END)"


FALSE = "1 = 0"  # a condition no row can meet (an integer column's cdmDatatype)
NULL_TEST = re.compile(r"^(t\.\"[a-z0-9_]+\") IS (NOT )?NULL$")


def count_if(cond: str, filter_aggs: bool = False) -> str:
    """The number of rows where `cond` holds; a plain null test of a column as count(col), which engines answer
    from the column's validity mask instead of evaluating a CASE per row."""
    if cond == FALSE:
        return "0"  # nothing to count per row
    m = NULL_TEST.match(cond)
    if m:
        return f"count({m[1]})" if m[2] else f"(count(*) - count({m[1]}))"
    return f"count(*) FILTER (WHERE {cond})" if filter_aggs else sum_if(cond)


def as_date(expr: str) -> str:
    """A date; days are added as integers (DATE + n stays a DATE on every engine: DATE + INTERVAL would make
    DuckDB compare timestamps row by row)."""
    return f"CAST({expr} AS DATE)"


def _ymd(y: str, m: str, d: str) -> str:
    """yyyymmdd as a number, in 64 bits: a year of birth of 3004410 (a concept id in the wrong field) is no
    overflow that stops the checks, but a birth after every date."""
    return f"(CAST({y} AS BIGINT) * 10000 + CAST({m} AS BIGINT) * 100 + {d})"


_BIRTH_FIELDS = ("year_of_birth", "coalesce(month_of_birth, 1)", "coalesce(day_of_birth, 1)")
# The person table as the checks join it: with each person's birth as a date (birth_datetime if known, else the
# earliest day the birth fields allow; NULL when they make no sure date, as month 13 or day 30 might not) and,
# without birth_datetime, as the number yyyymmdd, which any birth fields give. A row's date is then compared with
# a date, and only for persons without one taken apart (EXTRACT of year, month and day on every row of a fact
# table cost DuckDB 0.1 s per date field per 8.5M rows, where birth_datetime is empty, as in many CDMs).
_BIRTH_DATE = " || '-' || ".join(f"lpad(CAST({f} AS VARCHAR), {n}, '0')" for f, n in zip(_BIRTH_FIELDS, (4, 2, 2)))


def person_sql(columns=None) -> str:
    """PERSON for a person table of these `columns` (None: the spec's): a birth field it lacks (a CDM trimmed to
    what its source had) reads as not known (NULL), as an empty one."""
    lack = [f"CAST(NULL AS {t}) AS {n}" for n, t in BIRTH_COLUMNS.items()
            if columns is not None and n not in columns]
    src = f"(SELECT *, {', '.join(lack)} FROM person) AS p__" if lack else "person"
    return ("(SELECT *, CASE WHEN birth_datetime IS NOT NULL THEN CAST(birth_datetime AS DATE) "
            f"WHEN {_BIRTH_FIELDS[0]} BETWEEN 1 AND 9999 AND {_BIRTH_FIELDS[1]} BETWEEN 1 AND 12 "
            f"AND {_BIRTH_FIELDS[2]} BETWEEN 1 AND 28 THEN CAST({_BIRTH_DATE} AS DATE) END AS birth_date__, "
            f"CASE WHEN birth_datetime IS NULL THEN {_ymd(*_BIRTH_FIELDS)} END AS birth_key__ FROM {src})")


PERSON = person_sql()


def one_per_key(table: str, key: str, person_columns=None) -> str:
    """`table` as one row per `key`, for a join when the key is duplicated: a row of the checked table then counts
    once, and violates when it would against any of the key's rows (as death is joined by the earliest death):
    a person's latest birth (the date only when every row has one, else as yyyymmdd), its gender only where its
    rows agree (else -1, no gender: every gender rule fails), a visit's latest start and earliest end; any other
    table is joined for its key alone (isForeignKey reads nothing else)."""
    if table == "person":
        ymd = _ymd(*(f"EXTRACT({p} FROM birth_date__)" for p in ("YEAR", "MONTH", "DAY")))
        gender = (", CASE WHEN min(gender_concept_id) = max(gender_concept_id) THEN min(gender_concept_id) ELSE -1 "
                  "END AS gender_concept_id" if person_columns is None or "gender_concept_id" in person_columns else "")
        return ("(SELECT person_id, CASE WHEN count(*) = count(birth_date__) THEN max(birth_date__) END AS "
                f"birth_date__, max(coalesce(birth_key__, {ymd})) AS birth_key__{gender} "
                f"FROM {person_sql(person_columns)} AS p1 GROUP BY person_id)")
    if table == "visit_occurrence":
        return ("(SELECT visit_occurrence_id, max(visit_start_date) AS visit_start_date, min(visit_end_date) AS "
                "visit_end_date FROM visit_occurrence GROUP BY visit_occurrence_id)")
    return f"(SELECT DISTINCT {q(key)} FROM {q(table)})"


def _birth_after(p: str, when: str) -> str:
    """Birth after the date `when`: birth_datetime if known, else the earliest day the birth fields allow
    (year_of_birth, month_of_birth or January, day_of_birth or the 1st) — so a date in the birth year but
    before the birth month counts, and no date that could be after birth does. `p`: the person table's alias (a
    statement reading its birth joins it as PERSON: Context.join_sql), or `t` (the person table itself)."""
    key = _ymd(f"EXTRACT(YEAR FROM {when})", f"EXTRACT(MONTH FROM {when})", f"EXTRACT(DAY FROM {when})")
    if p != "t":
        return (f"(({p}.birth_date__ IS NOT NULL AND {p}.birth_date__ > {when}) OR "
                f"({p}.birth_date__ IS NULL AND {p}.birth_key__ > {key}))")
    own = _ymd(f"{p}.year_of_birth", f"coalesce({p}.month_of_birth, 1)", f"coalesce({p}.day_of_birth, 1)")
    return (f"(({p}.birth_datetime IS NOT NULL AND CAST({p}.birth_datetime AS DATE) > {when}) OR "
            f"({p}.birth_datetime IS NULL AND {own} > {key}))")


def field_item(c: Check, ctx: Context) -> Item:
    """An Item for a field-level check on table `ctx.table`; NotApplicable if it cannot apply."""
    f = ctx.need_column(c.field)
    col_type = ctx.columns[c.field].split("(")[0]
    nn = f"{f} IS NOT NULL"
    name = c.name
    joins_before = set(ctx.joins)

    def item(cond: str, den_cond: str | None = None, needs=()) -> Item:
        used = tuple(a for a in ctx.joins if a not in joins_before or a in _used(cond, den_cond))
        grouped = bool(used) and all(ctx.joins[a][1] == "concept" and a == f"fk_{c.field}" for a in used)
        agg = lambda x: count_if(x, ctx.shapes.filter_aggs)  # noqa: E731
        return Item(c, agg(cond), agg(den_cond) if den_cond else "count(*)", used, cond, tuple(needs), den_cond,
                    grouped)

    if name in ("isRequired", "measureValueCompleteness"):
        return item(f"{f} IS NULL")
    if name == "cdmDatatype":
        if col_type in INTEGRAL:
            return item(FALSE)  # the engine's column type guarantees integers
        if col_type in FLOATING:
            return item(f"{nn} AND {f} <> floor({f})")
        return item(f"{nn} AND NOT regexp_matches(trim(CAST({f} AS VARCHAR)), '^-?[0-9]+$')")
    if name == "isForeignKey":
        ft = c.param("fk_table")
        if ft != "concept" and ctx.present.get(ft) == 0:  # an empty referenced table: every value violates
            return item(nn, needs=[ft])
        a = ctx.fk(c.field, ft, c.param("fk_field"))
        return item(f"{nn} AND {a}.{q(c.param('fk_field'))} IS NULL", needs=[c.param("fk_table")])
    if name in ("fkDomain", "fkClass", "isStandardValidConcept", "mappingCoverage"):
        if name == "mappingCoverage" and not ctx.has("concept"):
            return item(f"({f} IS NULL OR {f} = 0)")  # without a vocabulary only unmapped (0/NULL) rows count
        a = ctx.fk(c.field, "concept", "concept_id")
        domains = ", ".join(lit(d.strip()) for d in str(c.param("domain", "")).split(","))
        cond = {
            "fkDomain": f"{a}.concept_id <> 0 AND {a}.domain_id NOT IN ({domains})",
            "fkClass": f"{a}.concept_id <> 0 AND {a}.concept_class_id <> {lit(c.param('class'))}",
            "isStandardValidConcept": f"{a}.concept_id <> 0 AND (coalesce({a}.standard_concept, '') <> 'S' "
                                      f"OR coalesce({a}.invalid_reason, '') <> '')",
            "mappingCoverage": f"({f} IS NULL OR {f} = 0 OR {a}.concept_id IS NULL "
                               f"OR coalesce({a}.standard_concept, '') <> 'S')",
        }[name]
        return item(cond, nn if name == "isStandardValidConcept" else None, needs=["concept"])
    if name in ("standardConceptRecordCompleteness", "sourceConceptRecordCompleteness"):
        # DQD 2.7: 0 is unmapped; so is a NULL beside its source value where the field is not required
        sv = c.param("source_value")
        if c.param("required") or sv not in ctx.columns:
            return item(f"{f} = 0", nn)
        v = f"t.{q(sv)} IS NOT NULL"
        return item(f"({f} = 0 OR ({f} IS NULL AND {v}))", f"({nn} OR {v})")
    if name == "sourceValueCompleteness":
        s = ctx.need_column(c.param("standard_field"))
        null = lambda cond: f"coalesce(max(CASE WHEN {cond} THEN 1 END), 0)"  # noqa: E731
        return Item(c, f"count(DISTINCT CASE WHEN {s} = 0 THEN {f} END) + {null(f'{s} = 0 AND {f} IS NULL')}",
                    f"count(DISTINCT {f}) + {null(f'{f} IS NULL')}", (), f"{s} = 0",
                    grouped=ctx.shapes.distinct_on_groups, group_cols=(c.param("standard_field"),),
                    weighted=False)
    if name in ("plausibleValueLow", "plausibleValueHigh"):
        v = c.param("value")
        expr = as_date(f) if isinstance(v, dt.date) else f
        op = "<" if name == "plausibleValueLow" else ">"
        return item(f"{expr} {op} {lit(v)}", nn)
    if name == "plausibleTemporalAfter":
        at, af = c.param("after_table"), c.param("after_field")
        if at == ctx.table:
            other = ctx.need_column(af)
            return item(f"{as_date(other)} > {as_date(f)}")
        if at == "person" and af == "birth_datetime":
            p = ctx.birth()
            return item(f"{nn} AND {_birth_after(p, as_date(f))}", needs=["person"])
        raise NotApplicable(f"temporal rule against {at}.{af} is not supported")
    if name == "plausibleAfterBirth":
        p = ctx.birth()
        return item(f"{nn} AND {_birth_after(p, as_date(f))}", nn, needs=["person"])
    if name in ("plausibleDuringLife", "plausibleBeforeDeath"):
        d = ctx.death()  # DQD allows 60 days after death (e.g. claims processed late)
        died = f"{d}.person_id IS NOT NULL"  # (a death row without its date too, as DQD's `IN (… death)`)
        return item(f"{as_date(f)} > {as_date(f'{d}.death_date')} + 60",
                    died if name == "plausibleDuringLife" else f"{nn} AND {died}", needs=["death"])
    if name == "plausibleStartBeforeEnd":
        end = ctx.need_column(c.param("end_field"))
        return item(f"{as_date(f)} > {as_date(end)}", f"{nn} AND {end} IS NOT NULL")
    if name == "withinVisitDates":
        ctx.need_column("visit_occurrence_id")
        v = ctx.fk("visit_occurrence_id", "visit_occurrence", "visit_occurrence_id")
        return item(f"({as_date(f)} < CAST({v}.visit_start_date AS DATE) - 7 OR "
                    f"{as_date(f)} > CAST({v}.visit_end_date AS DATE) + 7)",
                    f"{v}.visit_occurrence_id IS NOT NULL", needs=["visit_occurrence"])
    if name == "site":
        return item(violating(c.param("violation"), c.param("denominator")), c.param("denominator"))
    raise NotApplicable(f"no field-level compiler for {name}")


def violating(violation: str, denominator: str | None) -> str:
    """A site check's violating rows: those of its denominator that its violation holds for (a percentage of at
    most 100, as every check counts)."""
    return f"({denominator}) AND ({violation})" if denominator else f"({violation})"


def _used(*conds) -> set[str]:
    text = " ".join(x for x in conds if x)
    return {w.split(".")[0] for w in text.replace("(", " ").split() if "." in w}


def _scan_aggs(items: list[Item]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Each distinct aggregate once (expression -> column name), and each item's (violations, denominator)
    columns: checks sharing a condition (isRequired and measureValueCompleteness, …) share the column."""
    aggs = {"count(*)": "n"}
    refs = [(aggs.setdefault(it.num, f"a{len(aggs)}"), aggs.setdefault(it.den, f"a{len(aggs)}")) for it in items]
    return aggs, refs


def scan_refs(items: list[Item]) -> list[tuple[str, str]]:
    """The (violations, denominator) column of each item in `scan_sql(…, items, …)`."""
    return _scan_aggs(items)[1]


def scan_sql(table: str, items: list[Item], ctx: Context) -> str:
    """ONE query computing every item's violations and denominator over `table` (plus the row count `n`);
    each distinct aggregate once (a short statement is also quick to translate to other dialects)."""
    aggs, _ = _scan_aggs(items)
    aliases = []
    for it in items:
        aliases += [a for a in it.joins if a not in aliases]
    joins = ctx.join_sql(aliases, *aggs)
    return f"SELECT {', '.join(f'{e} AS {n}' for e, n in aggs.items())} FROM {q(table)} AS t {joins}".strip()


CONCEPT_COLUMNS = ("concept_id", "domain_id", "concept_class_id", "standard_concept", "invalid_reason")


def grouped_sql(table: str, items: list[Item], ctx: Context) -> str:
    """The concept checks of a table in ONE query that groups the table by its concept fields first, looks up
    the concept rows of just the ids that occur (once), and joins them to the (few) distinct combinations:
    each condition is weighted by its group's size. (GROUPING SETS per field was slower on DuckDB.)
    Per weighted item also the lowest and highest violating value of its field (lo{i}, hi{i}): every row with
    one of them violates, so the examples need no join to the vocabulary (`value_condition`)."""
    fields = sorted({it.check.field for it in items} | {f for it in items for f in it.group_cols})
    cols = ", ".join(q(f) for f in fields)
    aggs = ["sum(t.n__) AS n"]
    # the counts of distinct values (sourceValueCompleteness, on engines that count them on groups) are taken on
    # the groups (`g__`); the weighted conditions on the groups of the concept fields alone (`c__`): a source
    # value may be one per row (a visit number) and make as many groups as rows, over which every condition and
    # concept join would run again (PostgreSQL: 8.2 s for the simulated hospital's 1.3M visits, 2.9 s so)
    distinct = [(i, it) for i, it in enumerate(items) if not it.weighted]
    concept = sorted({it.check.field for it in items if it.weighted})
    for i, it in enumerate(items):
        if not it.weighted:  # counted on `g__` below (s__)
            aggs += [f"max(s__.v{i}) AS v{i}", f"max(s__.d{i}) AS d{i}"]
            continue
        aggs += [f"sum(CASE WHEN {it.where} THEN t.n__ ELSE 0 END) AS v{i}",
                 f"sum(CASE WHEN {it.den_where} THEN t.n__ ELSE 0 END) AS d{i}" if it.den_where else f"sum(t.n__) AS d{i}",
                 f"min(CASE WHEN {it.where} THEN t.{q(it.check.field)} END) AS lo{i}",
                 f"max(CASE WHEN {it.where} THEN t.{q(it.check.field)} END) AS hi{i}"]
    aliases = []
    for it in items:
        aliases += [a for a in it.joins if a not in aliases]
    src = "c__" if distinct else "g__"  # what the weighted conditions and the concept lookup read
    joins = " ".join(f"LEFT JOIN lk__ AS {a} ON t.{q(a[3:])} = {a}.concept_id" for a in aliases)
    ids = " UNION ".join(f"SELECT {q(a[3:])} FROM {src}" for a in aliases)
    ids = f"= ANY(ARRAY({ids}))" if ctx.shapes.lookup_array else f"IN ({ids})"
    # one row per concept: a concept_id the vocabulary holds twice (a local concept added again) is counted once
    lookup = (f", lk__ AS (SELECT concept_id, {', '.join(f'min({c}) AS {c}' for c in CONCEPT_COLUMNS[1:])} FROM concept "
              f"WHERE concept_id {ids} GROUP BY concept_id)") if aliases else ""
    withs = f"g__ AS (SELECT {cols}, count(*) AS n__ FROM {q(table)} GROUP BY {cols})"
    rest = ""
    if distinct:
        ccols = ", ".join(q(f) for f in concept)
        withs += (f", c__ AS (SELECT {ccols + ', ' if ccols else ''}sum(n__) AS n__ FROM g__"
                  f"{' GROUP BY ' + ccols if ccols else ''})")
        rest = " CROSS JOIN (SELECT " + ", ".join(f"{it.num} AS v{i}, {it.den} AS d{i}" for i, it in distinct) + \
            " FROM g__ AS t) AS s__"
    return f"WITH {withs}{lookup} SELECT {', '.join(aggs)} FROM {src} AS t {joins}{rest}"


def value_condition(it: Item, values: list) -> tuple[str, tuple[str, ...]] | None:
    """A grouped item's violating rows, for examples: the rows whose field has one of `values` (violating values
    found by `grouped_sql`), with no join; None when there is none."""
    values = sorted({v for v in values if v is not None})
    return (f"t.{q(it.check.field)} IN ({', '.join(lit(v) for v in values)})", ()) if values else None


def single_sql(table: str, it: Item, ctx: Context) -> str:
    """The same item as a query of its own (the one-query-per-check baseline, and error isolation)."""
    joins = ctx.join_sql(it.joins, it.num, it.den)
    return f"SELECT {it.num} AS v0, {it.den} AS d0 FROM {q(table)} AS t {joins}".strip()


def dqd_sql(table: str, it: Item, ctx: Context) -> str:
    """The same item shaped as DQD's own SQL templates run it (the `dqd` baseline): a subquery selecting the
    violating rows (a label and every column of the row), counted, cross-joined to a second query counting the
    denominator rows. Items without a row condition (DISTINCT counts, probes) run as `single_sql`."""
    if not it.where or not it.weighted:
        return single_sql(table, it, ctx)
    joins = ctx.join_sql(it.joins, it.where)
    den_joins = ctx.join_sql([a for a in it.joins if it.den_where and a in _used(it.den_where)], it.den_where)
    den = f" WHERE {it.den_where}" if it.den_where else ""
    return dqd_wrap(table, it.check.field or "", f"{joins} WHERE {it.where}",
                    f"SELECT count(*) AS num_rows FROM {q(table)} AS t {den_joins}{den}")


def dqd_wrap(table: str, fld: str, rest: str, denominator: str) -> str:
    """DQD's result shape, as v0, d0: the violating rows (`FROM table AS t {rest}`: joins and WHERE) selected with
    a label and every column, counted, cross-joined to the `denominator` query (one row, `num_rows`)."""
    violated = f"SELECT {lit(f'{table}.{fld}' if fld else table)} AS violating_field, t.* FROM {q(table)} AS t {rest}"
    v = f"(SELECT count(violated_rows.violating_field) AS num_violated_rows FROM ({violated}) AS violated_rows) AS vc"
    return f"SELECT vc.num_violated_rows AS v0, dn.num_rows AS d0 FROM {v} CROSS JOIN ({denominator}) AS dn"


def examples_sql(table: str, wanted: list[tuple[str, str, tuple[str, ...]]], ctx: Context, k: int = 10) -> str:
    """Up to k example row ids per (check id, condition, joins), as one UNION ALL query."""
    parts = []
    for cid, cond, joins in wanted:
        parts.append(
            f"SELECT * FROM (SELECT {lit(cid)} AS check_id, CAST(t.{q(ctx.id_column)} AS VARCHAR) AS row_id "
            f"FROM {q(table)} AS t {ctx.join_sql(joins, cond)} WHERE {cond} LIMIT {k}) AS e{len(parts)}")
    return " UNION ALL ".join(parts)


def primary_key_sql(table: str, fld: str, sort: bool = False) -> tuple[str, str]:
    """(violations query, examples query) for isPrimaryKey: rows whose key value occurs more than once (a NULL
    key is no value, as in DQD's `IN`: isRequired counts it). `sort`: find them by sorting (a row equal to its
    neighbour) instead of a GROUP BY: same count, about twice as fast on DuckDB for a million unique keys (a sort
    beats a hash table that does not fit the cache)."""
    dup = (f"SELECT {q(fld)} AS k, count(*) AS n FROM {q(table)} WHERE {q(fld)} IS NOT NULL GROUP BY {q(fld)} "
           "HAVING count(*) > 1")
    ex = f"SELECT CAST(k AS VARCHAR) AS row_id FROM ({dup}) AS d ORDER BY k LIMIT 10"
    if sort:
        f = q(fld)
        w = (f"SELECT {f} AS k, lag({f}) OVER (ORDER BY {f}) AS p, lead({f}) OVER (ORDER BY {f}) AS nx "
             f"FROM {q(table)}")
        return f"SELECT {sum_if('k = p OR k = nx')} AS v0 FROM ({w}) AS w", ex
    return f"SELECT coalesce(sum(n), 0) AS v0 FROM ({dup}) AS d", ex


def primary_key_dqd_sql(table: str, fld: str) -> str:
    """isPrimaryKey shaped as DQD's template (the rows whose key is among the duplicated keys, counted)."""
    f = q(fld)
    dup = f"SELECT {f} FROM {q(table)} GROUP BY {f} HAVING count(*) > 1"
    return dqd_wrap(table, fld, f"WHERE t.{f} IN ({dup})",
                    f"SELECT count(*) AS num_rows FROM {q(table)}")


def key_unique_sql(table: str, fld: str, bitmap: bool = False) -> str:
    """0 when the keys present are distinct (then isPrimaryKey has no violation; otherwise the exact
    query counts them): on PostgreSQL a DISTINCT count sorts, ~8x faster than a GROUP BY of a million keys.
    `bitmap`: the distinct keys counted as the bits set in a bitmap of the column's range (DuckDB's bitstring_agg,
    the range from the column's statistics), ~10x faster than sorting 8.5M keys; an error (keys not integers, or
    too sparse for a bitmap) leaves the exact query to count."""
    f = q(fld)
    if bitmap:
        return f"SELECT count({f}) - bit_count(bitstring_agg({f})) AS x FROM {q(table)}"
    return f"SELECT count({f}) - count(DISTINCT {f}) AS x FROM {q(table)}"


# -- concept level -----------------------------------------------------------------------------------------

def inline_rows(rows: list[dict]) -> str:
    """Literal rows as an inline VALUES table (one small relation on every engine); the first row is cast so
    every engine gives the columns the same types. Use as `FROM (...) AS alias`: returns `VALUES … ) AS x(cols`."""
    first = "(" + ", ".join(f"CAST({lit(v)} AS {t})" for v, t in rows[0].values()) + ")"
    rest = ["(" + ", ".join(lit(v) for v, _ in r.values()) + ")" for r in rows[1:]]
    return f"SELECT * FROM (VALUES {', '.join([first] + rest)}) AS v({', '.join(rows[0])})"


# plausibleUnitConceptIds' rows (DQD 2.7): any unit but 0 (an unmapped unit, standardConceptRecordCompleteness's),
# with or without a value; a NULL unit (no unit) is no wrong unit
UNITS_SCOPE = "coalesce(t.unit_concept_id, -1) <> 0"


def concept_queries(table: str, checks: list[Check], ctx: Context) -> list[tuple[str, list[Check], tuple[str, ...], tuple]]:
    """(query, checks, tables read, parts for `concept_examples_sql`) per rule kind; each query returns rows
    (rid, v, d) with rid = index in checks."""
    out = []
    value = [c for c in checks if c.name in ("plausibleValueLow", "plausibleValueHigh")]
    gender = [c for c in checks if c.name in ("plausibleGender", "plausibleGenderUseDescendants")]
    units = [c for c in checks if c.name == "plausibleUnitConceptIds"]

    def add(frm: str, pre: str | None, viol: str, group: list[Check], reads: tuple[str, ...]):
        where = f" WHERE {pre}" if pre else ""
        out.append((f"SELECT r.rid, {sum_if(viol)} AS v, count(*) AS d {frm}{where} GROUP BY r.rid", group, reads,
                    (frm, pre, viol)))

    if value:
        ctx.need_column("value_as_number")
        ctx.need_column("unit_concept_id")
        rows = [{"rid": (i, "INTEGER"), "concept_id": (cid, "INTEGER"), "unit_id": (c.unit_concept_id, "INTEGER"),
                 "lo": (c.param("value") if c.name == "plausibleValueLow" else None, "DOUBLE"),
                 "hi": (c.param("value") if c.name == "plausibleValueHigh" else None, "DOUBLE")}
                for i, c in enumerate(value) for cid in c.param("concept_ids")]
        f = ctx.need_column(value[0].field)
        add(f"FROM {q(table)} AS t JOIN ({inline_rows(rows)}) AS r ON {f} = r.concept_id "
            "AND t.unit_concept_id = r.unit_id",
            "t.value_as_number IS NOT NULL", "t.value_as_number < r.lo OR t.value_as_number > r.hi", value, ())
    if gender:
        ctx.need_column("person_id")
        ctx.need_table("person", "gender")
        ctx.need_person_column("gender_concept_id")
        direct = [{"rid": (i, "INTEGER"), "concept_id": (cid, "INTEGER"), "g": (c.param("gender_concept_id"), "INTEGER")}
                  for i, c in enumerate(gender) if c.name == "plausibleGender" for cid in c.param("concept_ids")]
        desc = [{"rid": (i, "INTEGER"), "concept_id": (cid, "INTEGER"), "g": (c.param("gender_concept_id"), "INTEGER")}
                for i, c in enumerate(gender) if c.name != "plausibleGender" for cid in c.param("concept_ids")]
        rules = [f"SELECT rid, concept_id, g FROM ({inline_rows(direct)}) AS r0"] if direct else []
        reads = ("person",)
        if desc:
            ctx.need_table("concept_ancestor", "descendants")
            rules.append(f"SELECT DISTINCT r1.rid, ca.descendant_concept_id AS concept_id, r1.g "
                         f"FROM ({inline_rows(desc)}) AS r1 "
                         "JOIN concept_ancestor AS ca ON ca.ancestor_concept_id = r1.concept_id")
            reads += ("concept_ancestor",)
        f = ctx.need_column(gender[0].field)
        add(f"FROM {q(table)} AS t JOIN ({' UNION ALL '.join(rules)}) AS r ON {f} = r.concept_id "
            f"LEFT JOIN {ctx.target('person', 'person_id')} AS p ON t.person_id = p.person_id", None,
            "p.gender_concept_id <> r.g", gender, reads)
    if units:
        ctx.need_column("unit_concept_id")
        f = ctx.need_column(units[0].field)
        rules = [{"rid": (i, "INTEGER"), "concept_id": (cid, "INTEGER")}
                 for i, c in enumerate(units) for cid in c.param("concept_ids")]
        allowed = [{"rid": (i, "INTEGER"), "unit_id": (u, "INTEGER")} for i, c in enumerate(units) for u in c.param("units")]
        add(f"FROM {q(table)} AS t JOIN ({inline_rows(rules)}) AS r ON {f} = r.concept_id "
            f"LEFT JOIN ({inline_rows(allowed)}) AS ru ON ru.rid = r.rid AND ru.unit_id = t.unit_concept_id",
            UNITS_SCOPE, "t.unit_concept_id IS NOT NULL AND ru.rid IS NULL", units, ())
    return out


def concept_examples_sql(parts: tuple, rids: list[int], ctx: Context, k: int = 10) -> str:
    """Up to k example row ids (the smallest ids) for each failed rule `rids` of one rule kind, in ONE scan
    joined to the rules (not one scan per failed check): rows (rid, row_id)."""
    frm, pre, viol = parts
    cond = " AND ".join(x for x in (pre, f"({viol})", f"r.rid IN ({', '.join(str(r) for r in rids)})") if x)
    idc = f"t.{q(ctx.id_column)}"
    return (f"SELECT rid, row_id FROM (SELECT r.rid, CAST({idc} AS VARCHAR) AS row_id, row_number() OVER "
            f"(PARTITION BY r.rid ORDER BY {idc}) AS rn {frm} WHERE {cond}) AS x WHERE rn <= {k}")


def concept_single_sql(c: Check, ctx: Context, dqd: bool = False) -> str:
    """One concept-level check as a query of its own (the one-query-per-check baselines), returning v0, d0;
    `dqd`: shaped as DQD's templates (violating rows and denominator rows counted by two subqueries)."""
    cond, joins = concept_example(c, ctx)
    ids = ", ".join(str(i) for i in c.param("concept_ids"))
    f = f"t.{q(c.field)}"
    if c.name == "plausibleGenderUseDescendants":
        scope = f"{f} IN (SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({ids}))"
    else:
        scope = f"{f} IN ({ids})"
    if c.name in ("plausibleValueLow", "plausibleValueHigh"):
        scope += f" AND t.unit_concept_id = {c.unit_concept_id} AND t.value_as_number IS NOT NULL"
    elif c.name == "plausibleUnitConceptIds":
        scope += f" AND {UNITS_SCOPE}"
    js = ctx.join_sql(joins, scope, cond)
    if dqd:  # (a violating row is in scope: `cond` names the concepts, and its test fails on a missing value)
        return dqd_wrap(c.table, c.field, f"{js} WHERE {cond}",
                        f"SELECT count(*) AS num_rows FROM {q(c.table)} AS t {js} WHERE {scope}")
    return f"SELECT {sum_if(cond)} AS v0, count(*) AS d0 FROM {q(c.table)} AS t {js} WHERE {scope}"


def concept_example(c: Check, ctx: Context) -> tuple[str, tuple[str, ...]]:
    """(violating-row condition, joins) for one concept-level check, for examples."""
    f = f"t.{q(c.field)}"
    ids = ", ".join(str(i) for i in c.param("concept_ids"))
    if c.name in ("plausibleValueLow", "plausibleValueHigh"):
        op = "<" if c.name == "plausibleValueLow" else ">"
        return (f"{f} IN ({ids}) AND t.unit_concept_id = {c.unit_concept_id} "
                f"AND t.value_as_number {op} {lit(c.param('value'))}", ())
    if c.name == "plausibleUnitConceptIds":
        units = ", ".join(str(u) for u in c.param("units"))
        return f"{f} IN ({ids}) AND {UNITS_SCOPE} AND t.unit_concept_id NOT IN ({units})", ()
    p = ctx.person()
    ctx.need_person_column("gender_concept_id")
    g = c.param("gender_concept_id")
    if c.name == "plausibleGender":
        return f"{f} IN ({ids}) AND {p}.gender_concept_id <> {g}", (p,)
    return (f"{f} IN (SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({ids})) "
            f"AND {p}.gender_concept_id <> {g}", (p,))


# -- table level -------------------------------------------------------------------------------------------

def table_level_sql(c: Check, ctx: Context, dqd: bool = False) -> tuple[str, str, tuple[str, ...]]:
    """(query returning v0, d0; examples query; tables read) for a table-level check (`dqd`: in DQD's shape
    where that differs)."""
    t = q(c.table)
    if c.name == "measurePersonCompleteness":
        ctx.need_table("person", "persons")
        ctx.need_column("person_id")
        base = f"FROM person AS p LEFT JOIN (SELECT DISTINCT person_id FROM {t}) AS x ON p.person_id = x.person_id"
        # (a person row without a person_id is no person: isRequired counts it). PostgreSQL hashes the table's rows
        # for an anti-join about twice as fast as it groups them for the DISTINCT; DuckDB runs the join to the
        # DISTINCT three times as fast as the anti-join (0.07 s against 0.24 s on 8.5 million measurements)
        sql = (f"SELECT (SELECT count(*) FROM person AS p WHERE p.person_id IS NOT NULL AND NOT EXISTS (SELECT 1 "
               f"FROM {t} AS x WHERE x.person_id = p.person_id)) AS v0, (SELECT count(*) FROM person) AS d0"
               if ctx.shapes.anti_join else
               f"SELECT {sum_if('x.person_id IS NULL AND p.person_id IS NOT NULL')} AS v0, count(*) AS d0 {base}")
        if dqd:  # DQD's template: every person row left-joined to every row of the table
            sql = dqd_wrap("person", "person_id", f"LEFT JOIN {t} AS x ON t.person_id = x.person_id "
                           "WHERE x.person_id IS NULL AND t.person_id IS NOT NULL",
                           "SELECT count(*) AS num_rows FROM person")
        return (sql, f"SELECT CAST(p.person_id AS VARCHAR) AS row_id {base} WHERE x.person_id IS NULL "
                f"AND p.person_id IS NOT NULL ORDER BY p.person_id LIMIT 10", ("person",))
    if c.name == "measureConditionEraCompleteness":
        ctx.need_table("condition_occurrence", "conditions")
        base = ("FROM (SELECT DISTINCT person_id FROM condition_occurrence WHERE condition_concept_id <> 0) AS co "
                f"LEFT JOIN (SELECT DISTINCT person_id FROM {t}) AS x ON co.person_id = x.person_id")
        return (f"SELECT {sum_if('x.person_id IS NULL')} AS v0, count(*) AS d0 {base}",
                f"SELECT CAST(co.person_id AS VARCHAR) AS row_id {base} WHERE x.person_id IS NULL "
                f"ORDER BY co.person_id LIMIT 10", ("condition_occurrence",))
    if c.name == "measureObservationPeriodOverlap":
        s, e = "observation_period_start_date", "observation_period_end_date"
        s, e = as_date(s), as_date(e)  # (dates kept as text or timestamps by the site's ETL compare as dates)
        w = (f"SELECT person_id, {s} AS s, max({e}) OVER (PARTITION BY person_id ORDER BY {s}, {e} "
             f"ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end FROM {t}")
        bad = "s <= prev_end + 1"  # overlapping or back to back
        return (f"SELECT count(DISTINCT CASE WHEN {bad} THEN person_id END) AS v0, count(DISTINCT person_id) AS d0 "
                f"FROM ({w}) AS w",
                f"SELECT DISTINCT CAST(person_id AS VARCHAR) AS row_id FROM ({w}) AS w WHERE {bad} "
                f"ORDER BY row_id LIMIT 10", ())
    raise NotApplicable(f"no table-level compiler for {c.name}")
