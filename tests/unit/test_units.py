"""Unit normalization and conversion against known reference values."""
import pytest

from medlake.mapping import units

D = units.demo()


@pytest.mark.parametrize("text,ucum", [
    ("mg/dL", "mg/dL"), ("mg/dl", "mg/dL"), ("MG/DL", "mg/dL"), ("mmol/l", "mmol/L"), ("毫摩尔/升", "mmol/L"),
    ("10^9/L", "10*9/L"), ("×10⁹/L", "10*9/L"), ("x10E9/L", "10*9/L"), ("10E9/L", "10*9/L"), ("10*9/L", "10*9/L"),
    ("×10¹²/L", "10*12/L"), ("K/uL", "10*3/uL"), ("x10E3/uL", "10*3/uL"), ("M/uL", "10*6/uL"),
    ("μmol/L", "umol/L"), ("µmol/l", "umol/L"), ("％", "%"), ("mmHg", "mm[Hg]"), ("次/分", "/min"), ("bpm", "/min"),
    ("℃", "Cel"), ("秒", "s"), ("mL/min/1.73m2", "mL/min/{1.73_m2}"), ("ml/min/1.73m²", "mL/min/{1.73_m2}"),
    ("uIU/mL", "u[IU]/mL"), ("mIU/L", "m[IU]/L"), ("ng/ml", "ng/mL"), ("kg/m²", "kg/m2"),
])
def test_unit_spellings_parse_to_ucum(text, ucum):
    assert units.parse(text) == ucum


@pytest.mark.parametrize("text", ["", "  ", "bananas", "mg/furlong", None])
def test_unknown_units_are_none(text):
    assert units.parse(text) is None


@pytest.mark.parametrize("loinc,value,unit,expected,ucum", [
    ("2345-7", 100.0, "mg/dL", 100 / 18.016, "mmol/L"),          # glucose
    ("2345-7", 90.08, "mg/dl", 5.0, "mmol/L"),
    ("2160-0", 1.0, "mg/dL", 88.42, "umol/L"),                   # creatinine
    ("2160-0", 1.2, "mg/dL", 106.104, "umol/L"),
    ("2093-3", 200.0, "mg/dL", 200 / 38.67, "mmol/L"),           # cholesterol
    ("2085-9", 38.67, "mg/dL", 1.0, "mmol/L"),                   # HDL cholesterol: same factor
    ("2571-8", 150.0, "mg/dL", 150 / 88.57, "mmol/L"),           # triglycerides
    ("4548-4", 53.0, "mmol/mol", 53 / 10.929 + 2.15, "%"),      # HbA1c IFCC -> NGSP
    ("718-7", 14.5, "g/dL", 145.0, "g/L"),                       # hemoglobin: pure scale
    ("6690-2", 6.5, "K/uL", 6.5, "10*9/L"),                      # leukocytes: 10^3/uL = 10^9/L
    ("8310-5", 98.6, "°F", 37.0, "Cel"),                          # temperature, affine
])
def test_conversions_with_known_factors(loinc, value, unit, expected, ucum):
    n = units.normalize(loinc, value, unit)
    assert n.flag == "converted"
    assert n.ucum == ucum
    assert n.value == pytest.approx(expected, rel=1e-4)
    assert n.unit_concept_id == D.unit_concept(ucum) != 0


def test_hba1c_percent_to_ifcc_reference_points():
    # IFCC = (NGSP - 2.15) * 10.929: 6.5 % -> 48 mmol/mol, 7.0 % -> 53 mmol/mol (the published table)
    f = units.factor(units.BY_KEY["hba1c"], "%", "mmol/mol")
    assert round(6.5 * f[0] + f[1]) == 48
    assert round(7.0 * f[0] + f[1]) == 53


def test_canonical_unit_is_kept_and_flagged_ok():
    n = units.normalize("2345-7", 5.6, "mmol/L")
    assert (n.value, n.ucum, n.flag) == (5.6, "mmol/L", "ok")


def test_convert_false_keeps_the_value_in_its_unit():
    n = units.normalize("2345-7", 100.0, "mg/dL", convert=False)
    assert (n.value, n.ucum, n.flag) == (100.0, "mg/dL", "ok")


@pytest.mark.parametrize("loinc,value,unit", [("4548-4", 5.6, "mmol/L"), ("2345-7", 5.6, "%"),
                                              ("6690-2", 6.5, "mg/dL"), ("718-7", 140, "mmol/L")])
def test_impossible_unit_analyte_pairs_are_flagged_not_converted(loinc, value, unit):
    n = units.normalize(loinc, value, unit)
    assert n.flag == "impossible_unit"
    assert n.value == value


def test_value_under_the_other_systems_label_is_out_of_range():
    # 5.6 is a glucose in mmol/L; labelled mg/dL it would be 0.31 mmol/L: flagged, not converted
    n = units.normalize("2345-7", 5.6, "mg/dL")
    assert n.flag == "out_of_range" and n.value == 5.6 and n.ucum == "mg/dL"


def test_missing_unknown_and_unfactored_units():
    assert units.normalize("2345-7", 5.6, "").flag == "no_unit"
    assert units.normalize("2345-7", 5.6, "bananas").flag == "unknown_unit"
    assert units.normalize("2951-2", 140, "mg/dL").flag == "no_factor"   # sodium mass: no molar factor shipped
    assert units.normalize("99999-9", 3.0, "mg/dL").flag == "ok"         # unknown analyte: unit only


def test_unit_map_and_conversion_tables_agree_with_the_function(tmp_path):
    from medlake.cdm import store as cdm_store
    from medlake.cdm import vocab
    from medlake.engines import open_engine

    eng = open_engine(f"duckdb:{tmp_path / 's.duckdb'}")
    cdm_store.init(eng, "5.4")
    vocab.load(eng, vocab.demo_vocabulary_dir(), "5.4")
    counts = units.install(eng, extra_texts=["x10E9/L", "mg/dl"])
    assert counts["mapping_unit_conversion"] > 100
    glucose = eng.query("SELECT concept_id FROM concept WHERE vocabulary_id = 'LOINC' AND concept_code = '2345-7'"
                        ).column(0)[0].as_py()
    # set-based: the SQL a transform can use
    rows = eng.query(
        "WITH m(v, u) AS (VALUES (100.0, 'mg/dl'), (5.6, 'mmol/L'), (5.6, '%')) "
        "SELECT m.v, m.u, m.v * c.factor + c.shift AS value, c.to_unit_concept_id "
        "FROM m JOIN mapping_unit_map um ON um.unit_source_value = m.u "
        "LEFT JOIN mapping_unit_conversion c ON c.measurement_concept_id = ? "
        "AND c.from_unit_concept_id = um.unit_concept_id ORDER BY m.u", [glucose]).to_pylist()
    by_unit = {r["u"]: r for r in rows}
    assert by_unit["mg/dl"]["value"] == pytest.approx(units.normalize(glucose, 100.0, "mg/dl").value, rel=1e-5)
    assert by_unit["mmol/L"]["value"] == pytest.approx(5.6)
    assert by_unit["%"]["value"] is None  # no row: impossible pair
    eng.close()
