"""Site-defined checks, declared in TOML: a SQL predicate on a table, or a declared rule.

```toml
[[check]]
name = "visitInFuture"                 # how it is reported (check_name)
table = "visit_occurrence"
field = "visit_start_date"             # optional: reported as cdm_field
violation = "visit_start_date > DATE '2030-01-01'"   # SQL (DuckDB dialect), TRUE for a bad row
denominator = "visit_start_date IS NOT NULL"          # optional; default: all rows
threshold = 0                          # percent; 0 = any violation fails (DQD's rule)
category = "Plausibility"              # Kahn category / subcategory / context (optional)

[[check]]
name = "labValueRange"
table = "measurement"
field = "value_as_number"
rule = "range"                         # not_null | range (min, max) | allowed (values) | pattern (regex) | unique
min = 0
max = 1000
```
Feed (source-level) checks run over the landing's receipts, or, named here, a table of the site's own with one row
per received message or file (its interface engine's message log), which replaces them:

```toml
[feed]
table = "interface_message_log"   # any table with a source column and a received-at timestamp
source = "source"
received_at = "received_at"
drop = 0.5                     # a day below half the median of the previous 7 days is a volume drop
```

Or the landing's receipts (kept in UTC) counted by the hospital's own days:

```toml
[feed]
timezone = "Europe/Berlin"     # an IANA time zone; the days of the feed checks and their examples are local days
country = "DE"                 # its public holidays (python-holidays; ISO 3166 code), with a table too
subdivision = "BY"             # the state or province, where its holidays differ (optional)
holidays = [2026-12-24, 2026-12-31]   # and the site's own days no source is expected to send

[feed.sources.h3-adt]          # a source with a calendar of its own (the others keep the site's)
subdivision = "NW"             # its hospital's state (a `country` of its own drops the site's subdivision)
[feed.sources.h1-ed-adt]
sends_on_holidays = true       # an emergency department's feed: a silent holiday is a missing day
```

A site's staging tables (a CSV feed of its own: `stg_csv_<name>`) and stricter rules for medlake's: the record
key and the fields each source must send, per staging table (medlake's defaults: `source_fields.toml`; a key
given here replaces medlake's for that table, the others stay):

```toml
[source_fields.stg_csv_lab]
key = ["order_id", "test_code"]           # duplicate records: the same key twice from a source
mandatory = ["order_id", "patient_id", "test_code", "result_time"]
[source_fields.stg_csv_lab.when]
unit = "result_type = 'numeric'"          # mandatory only where the condition holds
```

The predicate is compiled into the table's one scan of site checks; a predicate that fails in the
database is reported as that check's `error`, the others still run. It is a condition on one row of the table, `t`
in the scan (or the table's own name); other tables and aggregates go in a subquery; its comments are taken out.

A site's own thresholds and notes for any check, as DQD's threshold files carry them (its `…Threshold` and
`…Notes` columns), by check id or, for every check of a type, by check name (an id wins over a name):

```toml
[thresholds]                           # percent
plausibleDuringLife = 1
field_isforeignkey_observation_person_id = 0.5

[notes]
field_isforeignkey_observation_person_id = "h1-emr sends observations of visitors; known, ticket 4711"
```
"""
from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import re
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from medlake.cdm import model
from medlake.quality.checks import MEDLAKE_TYPES, Check, check_types, fails
from medlake.quality.compile import CLOCK, NOW, Item, lit, q, sum_if, violating
from medlake.quality.feeds import FEED_DROP, SOURCE_TYPES, SPAN_KEYS, TYPES as FEED_TYPES, source_span

RULES = ("not_null", "range", "allowed", "pattern", "unique")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a site check's name (its id is made of it)
RULE_KEYS = {"not_null": (), "range": ("min", "max"), "allowed": ("values",), "pattern": ("regex",), "unique": ()}


def _bound(v) -> bool:
    """A range's bound: a number or a date (a TOML date, or one in quotes)."""
    if isinstance(v, str):
        try:
            dt.date.fromisoformat(v)
        except ValueError:
            return False
        return True
    return isinstance(v, (int, float, dt.date)) and not isinstance(v, bool)


def _kind(v) -> str:
    """A range bound's kind: a number, or a date (a date-time too, and a date in quotes)."""
    return "number" if isinstance(v, (int, float)) else "date"


TEXT_KEYS = ("name", "table", "field", "violation", "denominator", "rule", "category", "subcategory", "context",
             "severity", "description")
CHECK_KEYS = (*TEXT_KEYS, "threshold", "min", "max", "values", "regex")
SECTIONS = ("check", "feed", "source_fields", "thresholds", "notes")  # what a site checks file holds
# the words a check is reported and selected by (--check-severity; the report's Kahn categories), in their case
WORDS = {"category": ("Conformance", "Completeness", "Plausibility"), "context": ("Verification", "Validation"),
         "severity": ("fatal", "convention", "characterization", "site")}


def _taken() -> set[str]:
    """The check names medlake reports itself (DQD's, medlake's, the source-level ones), in lower case: a site
    check of one of these names would take the id of that check's result."""
    names = {n for v in model.VERSIONS for n in check_types(v)} | {*MEDLAKE_TYPES, *SOURCE_TYPES, *FEED_TYPES}
    return {n.lower() for n in names}


def _rule_sql(spec: dict, where: str) -> str:
    f, rule = q(spec["field"]), spec["rule"]
    if rule == "not_null":
        return f"{f} IS NULL"
    if rule == "range":
        parts = []
        for k in ("min", "max"):
            v = spec.get(k)
            if k in spec and not _bound(v):
                raise ValueError(f"{where}: {k} must be a number or a date (1900, 2.5, 2020-01-01), not {v!r}")
        if "min" in spec and "max" in spec and _kind(spec["min"]) != _kind(spec["max"]):
            raise ValueError(f"{where}: min {spec['min']!r} and max {spec['max']!r} are not of one kind (both numbers, "
                             "or both dates)")
        with contextlib.suppress(KeyError, TypeError):  # (both given, and of one kind)
            if spec["min"] > spec["max"]:
                raise ValueError(f"{where}: min {spec['min']!r} is above max {spec['max']!r}: no value could pass")
        if "min" in spec:
            parts.append(f"{f} < {lit(spec['min'])}")
        if "max" in spec:
            parts.append(f"{f} > {lit(spec['max'])}")
        if not parts:
            raise ValueError(f"{where}: rule 'range' needs min and/or max")
        return " OR ".join(parts)
    if rule == "allowed":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: rule 'allowed' needs values = [...]")
        return f"{f} IS NOT NULL AND {f} NOT IN ({', '.join(lit(v) for v in values)})"
    if rule == "pattern":
        if not isinstance(spec.get("regex"), str):
            raise ValueError(f"{where}: rule 'pattern' needs regex = \"...\" (a regular expression in quotes)")
        _regex(spec["regex"], where)
        return f"{f} IS NOT NULL AND NOT regexp_matches(CAST({f} AS VARCHAR), {lit(spec['regex'])})"
    if rule == "unique":
        t = q(spec["table"])
        return f"{f} IN (SELECT {f} FROM {t} WHERE {f} IS NOT NULL GROUP BY {f} HAVING count(*) > 1)"
    raise ValueError(f"{where}: unknown rule {rule!r}; use one of {', '.join(RULES)}")


def _rule_words(spec: dict) -> str:
    """A declared rule in words, its description when the site gives none ("year_of_birth below 1900 or above
    2026"; its SQL read as compiled, quotes and all)."""
    f, rule = spec["field"], spec["rule"]
    if rule == "range":
        return f"{f} " + " or ".join(f"{w} {spec[k]}" for k, w in (("min", "below"), ("max", "above")) if k in spec)
    return {"not_null": f"{f} is empty", "allowed": f"{f} is not one of {spec.get('values')}",
            "pattern": f"{f} does not match {spec.get('regex')}", "unique": f"{f} is held by more than one row"}[rule]


def _regex(regex: str, where: str) -> None:
    """A rule's regular expression as the database reads it (DuckDB's RE2), refused before the run if it does not
    compile (`([A-Z` was each run's error, in DuckDB's words)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SELECT regexp_matches('', {lit(regex)})")
    except duckdb.Error as e:
        why = str(e).splitlines()[0].split(": ", 1)[-1]
        raise ValueError(f"{where}: regex {regex!r} is not a regular expression: {why}") from None
    finally:
        con.close()


def feed_config(text: str, source: str = "site checks") -> dict | None:
    """The [feed] settings of a site checks file, or None: a table of the site's own (`table`, `source`,
    `received_at`) or, without one, the landing's receipts, counted by the hospital's local days (`timezone`);
    either way `drop` and the days no source is expected to send: the public holidays of `country` (and of its
    `subdivision`), and the site's own `holidays`."""
    feed = _toml(text, source).get("feed")
    if feed is None:
        return None
    keys = {"table", "source", "received_at", "drop", "timezone", "holidays", "country", "subdivision", "sources"}
    if not isinstance(feed, dict) or set(feed) - keys:
        raise ValueError(f"{source}: [feed] takes table, source, received_at, drop, timezone, holidays, country, "
                         "subdivision and sources")
    for key in ("table", "source", "received_at", "timezone"):
        if key in feed and not isinstance(feed[key], str):
            raise ValueError(f"{source}: [feed] {key} must be text (in quotes), not {feed[key]!r}")
    drop = feed.get("drop", FEED_DROP)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 < drop <= 1:
        raise ValueError(f"{source}: [feed] drop must be a share between 0 and 1 (0.5: a day below half the usual "
                         f"volume), not {drop!r}")
    tz = feed.get("timezone")
    if tz is not None:
        if feed.get("table"):
            raise ValueError(f"{source}: [feed] timezone is for the landing's receipts (kept in UTC); a [feed] table's "
                             "times are read as they are (give one or the other)")
        try:
            ZoneInfo(str(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{source}: [feed] timezone {tz!r} is not a time zone (an IANA name such as "
                             "Europe/Berlin or America/New_York)") from None
    days = _days_off(feed, source, "[feed]")
    sources = feed.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, dict) for v in sources.values()):
        raise ValueError(f"{source}: [feed.sources.NAME] are tables, one per source with a calendar of its own")
    own = {}
    for name, spec in sources.items():
        where = f"[feed.sources.{name}]"
        if set(spec) - {"country", "subdivision", "holidays", "sends_on_holidays", *SPAN_KEYS}:
            raise ValueError(f"{source}: {where} takes country, subdivision, holidays, sends_on_holidays, from, until "
                             "and weekdays")
        if not isinstance(spec.get("sends_on_holidays", False), bool):
            raise ValueError(f"{source}: {where} sends_on_holidays is true or false")
        inherit = {k: feed[k] for k in ("country", "subdivision", "holidays") if k in feed}
        if "country" in spec:
            inherit.pop("subdivision", None)  # another country's calendar: not the site's state
        own[str(name)] = _days_off(inherit | spec, source, where) | {
            "sends_on_holidays": spec.get("sends_on_holidays", False)} | source_span(spec, f"{source}: {where}")
    return {"table": str(feed["table"]).lower() if feed.get("table") else None, "source": feed.get("source", "source"),
            "received_at": feed.get("received_at", "received_at"), "drop": float(drop),
            "timezone": tz, **days, "sources": own}


def _days_off(spec: dict, source: str, where: str) -> dict:
    """A calendar of days off, checked: its `holidays` (dates) and `country`'s public holidays (of `subdivision`)."""
    holidays = set()
    for d in spec.get("holidays", []) if isinstance(spec.get("holidays", []), list) else [spec["holidays"]]:
        try:
            holidays.add(d if isinstance(d, dt.date) and not isinstance(d, dt.datetime) else dt.date.fromisoformat(d))
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {where} holidays must be a list of dates (2026-12-25 or \"2026-12-25\"), "
                             f"not {d!r}") from None
    country, sub = _calendar(spec.get("country"), spec.get("subdivision"), f"{source}: {where}")
    return {"holidays": frozenset(holidays), "country": country, "subdivision": sub}


def _calendar(country, sub, where: str) -> tuple[str | None, str | None]:
    """A country and subdivision, checked against python-holidays' calendars."""
    if country is None:
        if sub is not None:
            raise ValueError(f"{where} subdivision {sub!r} needs the country it belongs to (country = \"DE\")")
        return None, None
    import holidays  # only for a site that names its country (~0.1 s to import)
    country, known = str(country).upper(), holidays.list_supported_countries()
    if country not in known:
        raise ValueError(f"{where} country {country!r} has no calendar of public holidays here (an ISO 3166 "
                         "code such as DE, FR, US or IN; or list the days in holidays = [...])")
    if sub is not None and str(sub) not in known[country]:
        raise ValueError(f"{where} subdivision {sub!r} is not one of {country}'s: "
                         f"{', '.join(known[country]) or 'it has none'}")
    return country, None if sub is None else str(sub)


def fields_config(text: str, source: str = "site checks") -> dict:
    """The [source_fields.<staging table>] tables of a site checks file ({} if none), checked."""
    out = {}
    for table, spec in _table(_toml(text, source), "source_fields", source, "[source_fields.<staging table>]").items():
        where = f"{source}: [source_fields.{table}]"
        odd = sorted(set(spec) - {"key", "mandatory", "when"}) if isinstance(spec, dict) else []
        if not isinstance(spec, dict) or odd:
            raise ValueError(f"{where}: " + (f"unknown key {odd[0]!r}; " if odd else "")
                             + "give key = [...], mandatory = [...] and/or a [when] table")
        for k in ("key", "mandatory"):
            if k in spec and not (isinstance(spec[k], list) and all(isinstance(f, str) and f for f in spec[k])):
                raise ValueError(f"{where}: {k} must be a list of field names")
        when = spec.get("when", {})
        if not isinstance(when, dict):
            raise ValueError(f"{where}: when is a table, [source_fields.{table}.when]: field = \"SQL condition\"")
        for f, cond in when.items():  # (as a site check's violation: its comments out, one condition on a row)
            if not isinstance(cond, str):
                raise ValueError(f"{where}: when.{f} must be a SQL condition in quotes, not {cond!r}")
            try:
                sqlglot.parse_one(f"SELECT 1 WHERE {cond}", read="duckdb")
            except sqlglot.errors.SqlglotError as e:
                raise ValueError(f"{where}: when.{f} is not a valid SQL condition: {str(e).splitlines()[0]}") from e
            when[f] = _predicate(cond, f"when.{f}", table.lower(), where)
        out[table.lower()] = {k: ([f.lower() for f in v] if isinstance(v, list) else {f.lower(): c for f, c in v.items()})
                              for k, v in spec.items()}
    return out


def tuning_config(text: str, source: str = "site checks") -> dict:
    """{"thresholds": {check id or name: percent}, "notes": {check id or name: text}} of a site checks file."""
    doc = _toml(text, source)
    out: dict[str, dict] = {"thresholds": {}, "notes": {}}
    for key, value in _table(doc, "thresholds", source, "[thresholds]: check id or name = percent").items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f"{source}: [thresholds] {key} must be a percent from 0 to 100, not {value!r}")
        out["thresholds"][key] = float(value)
    for key, value in _table(doc, "notes", source, "[notes]: check id or name = \"text\"").items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{source}: [notes] {key} must be a text (a string in quotes)")
        out["notes"][key] = value.strip()
    return out


def tune(results: list[dict], tuning: dict) -> list[str]:
    """Apply a site's thresholds and notes to a run's results (in place): a counted check's status is decided again
    with the site's threshold (DQD's rule: 0 fails on any violation, otherwise more than the percent), its own kept
    as `default_threshold`; a note goes to `notes`. Warnings for entries that no check of the run has."""
    used: set[tuple[str, str]] = set()
    for r in results:
        for kind in ("thresholds", "notes"):
            for key in (r["check_id"], r["check_name"]):
                if key in tuning.get(kind, {}):
                    used.add((kind, key))
                    value = tuning[kind][key]
                    if kind == "notes":
                        r["notes"] = value
                    elif r["status"] in ("passed", "failed"):
                        r.setdefault("default_threshold", r["threshold"])
                        r["threshold"] = value
                        bad = fails(r["num_violated_rows"], r["pct_violated_rows"], value)
                        r["status"], r["failed"] = ("failed", True) if bad else ("passed", False)
                    break
    known = {k for r in results for k in (r["check_id"], r["check_name"])}

    def meant(key: str) -> str:  # (ids and names are matched as written: `sbprange` is not `sbpRange`)
        near = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, 1)
        return f" (did you mean {near[0]}?)" if near else ""

    return [f"[{kind}] {key}: no check of this run has that id or name{meant(key)} (a typo, or a table not checked)"
            for kind in ("thresholds", "notes") for key in tuning.get(kind, {}) if (kind, key) not in used]


def _table(doc: dict, key: str, source: str, how: str) -> dict:
    """A TOML table of the file ({} when absent); anything else is refused saying how it is written."""
    v = doc.get(key) or {}
    if not isinstance(v, dict):
        raise ValueError(f"{source}: {key} is a table, written {how}")
    return v


def _toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML: {e}") from e


def parse(text: str, source: str = "site checks") -> list[tuple[Check, Item]]:
    """Checks and their compiled items from TOML text; errors name the file, the check and what to fix."""
    doc = _toml(text, source)
    unknown = [k for k in doc if k not in SECTIONS]
    if unknown:
        raise ValueError(f"{source}: unknown section {unknown[0]!r}; a site checks file holds "
                         f"{', '.join(f'[{k}]' for k in SECTIONS[1:])} and [[check]] tables")
    out, seen, taken = [], set(), _taken()
    checks = doc.get("check", [])
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise ValueError(f"{source}: checks are tables, each written [[check]]")
    for n, spec in enumerate(checks, 1):
        name = spec.get("name")
        where = f"{source}: check #{n}" + (f" ({name})" if name else "")
        for key in ("name", "table"):
            if not spec.get(key):
                raise ValueError(f"{where}: missing '{key}'")
        for key in TEXT_KEYS:
            if key in spec and not isinstance(spec[key], str):
                raise ValueError(f"{where}: {key} must be text (in quotes), not {spec[key]!r}")
        odd = [k for k in spec if k not in CHECK_KEYS]
        if odd:
            raise ValueError(f"{where}: unknown key {odd[0]!r}; a check takes {', '.join(CHECK_KEYS)}")
        if not NAME.fullmatch(name):
            raise ValueError(f"{where}: name {name!r} must be letters, digits and _ (as DQD's check names, e.g. "
                             "labValueNegative): it makes the check's id, typed in `medlake quality show` and "
                             "[thresholds]")
        if name.lower() in seen:
            raise ValueError(f"{where}: duplicate check name {name!r} (names are compared in any case)")
        if name.lower() in taken:
            raise ValueError(f"{where}: {name!r} is the name of a check medlake runs itself; give yours another "
                             "(to change that check's threshold, use [thresholds])")
        seen.add(name.lower())
        spec = {k: (v.lower() if k in ("table", "field") and isinstance(v, str) else v) for k, v in spec.items()}
        if "violation" in spec and "rule" in spec:
            raise ValueError(f"{where}: give 'violation' (a SQL predicate) or 'rule', not both: one of them would "
                             "not be checked")
        if "violation" in spec or spec.get("rule") in RULE_KEYS:  # (a key no rule of it reads: a mistake, said)
            takes = RULE_KEYS.get(spec.get("rule"), ())
            odd = [k for k in ("min", "max", "values", "regex") if k in spec and k not in takes]
            if odd:
                by = f"rule {spec['rule']!r}" if "rule" in spec else "a violation (write the bounds in its SQL)"
                raise ValueError(f"{where}: {odd[0]!r} is not read by {by}" + (
                    f"; it takes {', '.join(takes)}" if takes else ""))
        if "violation" in spec:
            violation = _predicate(spec["violation"], "violation", spec["table"], where)
        elif "rule" in spec:
            if not spec.get("field"):
                raise ValueError(f"{where}: rule {spec['rule']!r} needs a 'field'")
            violation = _predicate(_rule_sql(spec, where), "violation", spec["table"], where)
        else:
            raise ValueError(f"{where}: give 'violation' (a SQL predicate) or 'rule' ({', '.join(RULES)})")
        den = _predicate(spec["denominator"], "denominator", spec["table"], where) if "denominator" in spec else None
        threshold = spec.get("threshold", 0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
            raise ValueError(f"{where}: threshold must be a percent from 0 to 100, not {threshold!r}")
        threshold = float(threshold)
        words = {}
        for key, allowed in WORDS.items():
            given = spec.get(key)
            words[key] = next((w for w in allowed if given and w.lower() == given.lower()), None)
            if given and words[key] is None:
                raise ValueError(f"{where}: {key} must be one of {', '.join(allowed)}, not {given!r}")
        check = Check(
            name=name, level="FIELD" if spec.get("field") else "TABLE", table=spec["table"], field=spec.get("field"),
            threshold=threshold, category=words["category"] or "Plausibility",
            subcategory=spec.get("subcategory", ""), context=words["context"] or "Validation",
            severity=words["severity"] or "site",
            description=spec.get("description", spec.get("violation") or _rule_words(spec)),
            params=(("violation", violation), ("denominator", den)), source="site")
        bad = violating(violation, den)
        item = Item(check, sum_if(bad), sum_if(f"({den})") if den else "count(*)", (), bad,
                    needs=_reads_of(spec["table"], violation, den), den_where=f"({den})" if den else None)
        out.append((check, item))
    return out


def _predicate(sql: str, label: str, table: str, where: str) -> str:
    """A site's SQL condition (`violation`, `denominator`) checked and made ready to be spliced into a one-line scan:
    its comments taken out (a trailing `-- note` swallowed the rest of the query), columns qualified by the checked
    table's own name read from its alias `t` (a correlated subquery's `visit_occurrence.person_id` on a check of
    visit_occurrence), the user's text otherwise as written. Refused with what to fix: an empty condition, SQL that
    does not parse, more than one statement, an aggregate or window function outside a subquery."""
    what = ("give a SQL condition, TRUE for a bad row (or a 'rule')" if label == "violation" else
            "give a SQL condition, or leave it out to count every row")
    if not sql.strip():
        raise ValueError(f"{where}: {label} is empty: {what}")
    try:
        tokens = sqlglot.tokenize(sql, read="duckdb")
    except sqlglot.errors.TokenError:
        if "/*" in sql:
            raise ValueError(f"{where}: {label} has a /* comment that is not closed: end it with */ (or put the note "
                             "in description)") from None
        raise ValueError(f"{where}: {label} is not valid SQL: a quote or comment is not closed") from None
    # the text of its tokens with what lies between them (spaces; comments, put as one space)
    parts, at = [], 0
    for tok in tokens:
        gap = sql[at:tok.start]
        parts += [gap if not gap.strip() else " ", sql[tok.start:tok.end + 1]]
        at = tok.end + 1
    sql = "".join(parts).strip()
    if not sql:
        raise ValueError(f"{where}: {label} is only a comment: {what}")
    head = f"SELECT 1 FROM {q(table)} AS t WHERE "
    try:
        tree = sqlglot.parse_one(head + sql, read="duckdb")
    except sqlglot.errors.SqlglotError as e:
        raise ValueError(f"{where}: {label} is not valid SQL: {_sql_error(e, len(head))}") from e
    if any(t.token_type.name == "SEMICOLON" for t in tokens):
        raise ValueError(f"{where}: {label} is one condition, not statements: remove its ';' and what follows")
    for node in tree.find_all(exp.AggFunc, exp.Window):
        if node.find_ancestor(exp.Select) is tree:
            raise ValueError(f"{where}: {label} is a condition on each row of {table}: {node.sql('duckdb')} is "
                             "computed over many rows, allowed only in a subquery (… IN (SELECT … GROUP BY … HAVING "
                             "count(*) > 1), or rule = \"unique\")")
    return _own_name_as_t(sql, tree, table, len(head), where, label)


def _own_name_as_t(sql: str, tree: exp.Expression, table: str, offset: int, where: str, label: str) -> str:
    """`sql` with each column qualified by `table`'s own name that means the checked row (no subquery around it reads
    a table of that name unaliased, or an alias of it) qualified by `t` instead, the alias the checked table has in
    the scan. A subquery's own `FROM visit_occurrence` (and its columns) stays as written. A column of another CDM
    table that no FROM around it reads (`person.year_of_birth` on measurement) is refused, saying how to read it."""
    try:
        scopes = {id(s.expression): s for s in traverse_scope(tree)}
    except (sqlglot.errors.SqlglotError, KeyError, ValueError):  # (a shape the scope walk does not know: as written)
        return sql
    spans, cdm = set(), {n for v in model.VERSIONS for n in model.load(v).table_names}
    for col in tree.find_all(exp.Column):
        qual = col.args.get("table")
        name = qual.name.lower() if isinstance(qual, exp.Identifier) else None
        if name is None or col.args.get("db") or (name != table and name not in cdm):
            continue
        scope = scopes.get(id(col.find_ancestor(exp.Select)))
        if scope is None or "start" not in qual.meta:
            continue
        while scope.parent is not None and not any(k.lower() == name for k in scope.sources):
            scope = scope.parent
        if scope.parent is not None or name == "t":  # read by a subquery's FROM
            continue
        if name != table:
            raise ValueError(f"{where}: {label} reads {col.sql('duckdb')}, but no FROM around it reads {name} by "
                             f"that name: a predicate reads its own table's columns ({table}'s, as t.x or x); read "
                             f"{name} in a subquery (EXISTS (SELECT 1 FROM {name} AS o WHERE o.person_id = t.person_id "
                             "AND …))")
        spans.add((qual.meta["start"] - offset, qual.meta["end"] - offset))  # the checked table, by its name
    for start, end in sorted(spans, reverse=True):
        sql = sql[:start] + "t" + sql[end + 1:]
    return sql


def _sql_error(e: Exception, offset: int) -> str:
    """A SQL parser's complaint as a person reads it: where in the predicate (the column counted from its start,
    not from the statement it was parsed in), without the parser's class names."""
    text = str(e).splitlines()[0]
    col = next((x.get("col") for x in getattr(e, "errors", []) if x.get("col")), None)
    if "<class" in text or "Required keyword" in text:
        text = "it does not parse"
    text = re.sub(r"\.?\s*Line \d+, Col: \d+\.?", "", text).strip()
    return text + (f" (at character {max(1, col - offset)})" if col else "")


def _reads_of(table: str, *predicates: str | None) -> tuple[str, ...]:
    """What a site check's predicates read beyond its table: the other tables they name, and the clock where they
    ask for the date (CLOCK) or the time (NOW: also for what has no fingerprint, a table of another schema or a
    file) — in its key, so that a run re-uses its result only while those are the same (a check of care_site's
    rows from location, or of visits in the last year, was re-used stale)."""
    out = set()
    for sql in filter(None, predicates):
        tree = sqlglot.parse_one(f"SELECT 1 FROM {table} AS t WHERE {sql}", read="duckdb")
        for t in tree.find_all(exp.Table):  # another schema's or database's table, or a file (read_csv(…),
            if t.db or t.catalog or not isinstance(t.this, exp.Identifier) or not re.fullmatch(r"\w+", t.name):
                out.add(NOW)  # 'x.parquet'), has no fingerprint here: read anew on every run (review-incr #3)
            else:
                out.add(t.name.lower())
        if any(tree.find_all(exp.CurrentDate)):
            out.add(CLOCK)
        if any(tree.find_all(exp.CurrentTimestamp, exp.CurrentTime, exp.Localtimestamp, exp.Localtime)) or any(
                f.name.lower() in TIME_FUNCTIONS for f in tree.find_all(exp.Anonymous)):
            out.add(NOW)
    return tuple(sorted(out - {table}))


# functions of the time of day that sqlglot reads as plain functions (DuckDB's, PostgreSQL's, SQL Server's)
TIME_FUNCTIONS = {"now", "getdate", "get_current_time", "get_current_timestamp", "transaction_timestamp",
                  "statement_timestamp", "clock_timestamp", "timeofday", "sysdate", "systimestamp"}


def load(path: str | Path) -> tuple[list[tuple[Check, Item]], dict | None, dict, dict]:
    """(site checks, feed config, source fields, thresholds and notes) from a TOML file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"site checks file {p} not found")
    try:  # (utf-8-sig: a file a Windows editor saved with a byte-order mark reads as it looks)
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start + 1} is 0x{e.object[e.start]:02x}): save it as UTF-8"
                         ) from None
    return parse(text, str(p)), feed_config(text, str(p)), fields_config(text, str(p)), tuning_config(text, str(p))
