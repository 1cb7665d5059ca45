"""The linkage model: Splink settings for Chinese and Western identities, with prior m/u probabilities.

The priors are used as they are for small sites (too few identities to estimate anything) and as the starting
point of unsupervised estimation (u by random sampling, m by expectation maximisation) for larger ones.
Comparison values come from `normalize.comparison_values`; blocking uses the HMAC-ed keys (`bk_*`).
"""
from __future__ import annotations

import copy


def _lvl(label: str, sql: str, m: float, u: float, **kw) -> dict:
    return {"sql_condition": sql, "label_for_charts": label, "m_probability": m, "u_probability": u, **kw}


def _null(*cols: str) -> dict:
    return {"sql_condition": " OR ".join(f"{c}_l IS NULL OR {c}_r IS NULL" for c in cols),
            "label_for_charts": "missing on one side", "is_null_level": True}


def _else(m: float, u: float) -> dict:
    return {"sql_condition": "ELSE", "label_for_charts": "different", "m_probability": m, "u_probability": u}


COMPARISONS = [
    {"output_column_name": "id_number", "comparison_description": "resident ID number", "comparison_levels": [
        _null("id_number"),
        _lvl("same ID number", "id_number_l = id_number_r", 0.93, 1e-6),
        _lvl("one character apart, check digit fails (typo)",
             "damerau_levenshtein(id_number_l, id_number_r) <= 1 AND NOT (id_valid_l AND id_valid_r)", 0.04, 1e-7),
        _else(0.03, 1.0 - 1.1e-6)]},
    {"output_column_name": "name", "comparison_description": "name (characters, pinyin, latin)", "comparison_levels": [
        _null("name_py"),
        _lvl("same characters", "name_cjk_l = name_cjk_r", 0.80, 0.002),
        _lvl("same pinyin / latin letters (transliteration or homophone)", "name_py_l = name_py_r", 0.08, 0.001),
        _lvl("family and given name swapped", "name_py_l = name_py_rev_r", 0.03, 0.0002),
        _lvl("pinyin Jaro-Winkler >= 0.92", "jaro_winkler_similarity(name_py_l, name_py_r) >= 0.92", 0.05, 0.004),
        _lvl("pinyin Jaro-Winkler >= 0.80", "jaro_winkler_similarity(name_py_l, name_py_r) >= 0.80", 0.02, 0.03),
        _else(0.02, 0.9628)]},
    {"output_column_name": "birth_date", "comparison_description": "birth date", "comparison_levels": [
        _null("birth_date"),
        _lvl("same birth date", "birth_date_l = birth_date_r", 0.92, 3e-5),
        _lvl("day and month swapped",
             "substr(birth_date_l, 1, 4) = substr(birth_date_r, 1, 4) AND substr(birth_date_l, 6, 2) = "
             "substr(birth_date_r, 9, 2) AND substr(birth_date_l, 9, 2) = substr(birth_date_r, 6, 2)", 0.03, 1e-6),
        _lvl("one digit apart (year or day typo)", "damerau_levenshtein(birth_date_l, birth_date_r) <= 1", 0.03, 4e-4),
        _else(0.02, 1.0 - 4.31e-4)]},
    {"output_column_name": "sex", "comparison_description": "sex", "comparison_levels": [
        _null("sex"),
        _lvl("same sex", "sex_l = sex_r", 0.98, 0.5),
        _else(0.02, 0.5)]},
    {"output_column_name": "phone", "comparison_description": "phone number", "comparison_levels": [
        _null("phone"),
        _lvl("same phone", "phone_l = phone_r", 0.70, 1e-6),
        _lvl("one digit apart", "damerau_levenshtein(phone_l, phone_r) <= 1", 0.03, 1e-5),
        _else(0.27, 1.0 - 1.1e-5)]},
    {"output_column_name": "address", "comparison_description": "address", "comparison_levels": [
        _null("address"),
        _lvl("same address", "address_l = address_r", 0.60, 1e-5),
        _lvl("address Jaro-Winkler >= 0.90", "jaro_winkler_similarity(address_l, address_r) >= 0.90", 0.15, 5e-3),
        _else(0.25, 1.0 - 5.01e-3)]},
    {"output_column_name": "insurance", "comparison_description": "insurance number", "comparison_levels": [
        _null("insurance"),
        _lvl("same insurance number", "insurance_l = insurance_r", 0.85, 1e-6),
        _else(0.15, 1.0 - 1e-6)]},
    {"output_column_name": "mrn", "comparison_description": "hospital record number (MRN)", "comparison_levels": [
        _null("mrn"),
        _lvl("same MRN at the same hospital", "mrn_l = mrn_r", 0.90, 1e-7),
        _lvl("other MRN at the same hospital (duplicate registration?)",
             "split_part(mrn_l, '|', 1) = split_part(mrn_r, '|', 1)", 0.10, 0.5),
        _else(0.5, 0.5)]},
]

BLOCKING_RULES = [f"l.bk_{k} = r.bk_{k}" for k in ("mrn", "id", "phone", "insurance", "name_dob", "name_year", "dob_initial")]

# Columns handed to Splink (besides unique_id and the bk_* keys).
COMPARISON_COLUMNS = ["name_cjk", "name_py", "name_py_rev", "id_number", "id_valid", "birth_date", "sex", "phone",
                      "address", "insurance", "mrn"]


def default_settings(prior: float = 1e-4) -> dict:
    """The model in DuckDB's SQL (the form medlake stores); `for_dialect` gives Splink's Spark form."""
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unique_id",
        "probability_two_random_records_match": prior,
        "comparisons": copy.deepcopy(COMPARISONS),
        "blocking_rules_to_generate_predictions": list(BLOCKING_RULES),
        "retain_matching_columns": True,
        "retain_intermediate_calculation_columns": True,
        "additional_columns_to_retain": [],
    }


# The SQL of the comparison levels differs between DuckDB and Spark (Splink's similarity UDF jar) only in these.
_SPARK_SPELLING = [("jaro_winkler_similarity(", "jaro_winkler("), ('"', "`")]


def for_dialect(settings: dict, dialect: str) -> dict:
    """A copy of `settings` whose comparison SQL is written for `dialect` ("duckdb" or "spark"). Models are stored
    in DuckDB's form; a run on a Spark store translates them there and back."""
    if dialect not in ("duckdb", "spark"):
        raise ValueError(f"no linkage model for SQL dialect {dialect!r}")
    out = copy.deepcopy(settings)
    pairs = _SPARK_SPELLING if dialect == "spark" else [(b, a) for a, b in _SPARK_SPELLING]
    for c in out["comparisons"]:
        for lv in c["comparison_levels"]:
            for a, b in pairs:
                lv["sql_condition"] = lv["sql_condition"].replace(a, b)
    out["sql_dialect"] = dialect
    return out


def levels(settings: dict) -> dict[str, dict[int, tuple[str, float | None]]]:
    """comparison -> gamma value -> (label, match weight log2(m/u)), as Splink numbers the levels."""
    import math

    out = {}
    for c in settings["comparisons"]:
        lv = c["comparison_levels"]
        n = len([x for x in lv if not x.get("is_null_level")])
        table, k = {}, n - 1
        for x in lv:
            if x.get("is_null_level"):
                table[-1] = (x["label_for_charts"], 0.0)
                continue
            m, u = x.get("m_probability"), x.get("u_probability")
            table[k] = (x["label_for_charts"], math.log2(m / u) if m and u else None)
            k -= 1
        out[c["output_column_name"]] = table
    return out
