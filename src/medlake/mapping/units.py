"""Units: source unit strings to UCUM and its OMOP concepts; analyte-aware conversion; impossible pairs flagged.

- `parse(text)` turns a unit as hospitals write it ("mg/dl", "×10⁹/L", "x10E9/L", "μmol/L", "次/分", "℃") into a
  UCUM code ("mg/dL", "10*9/L", "umol/L", "/min", "Cel"), or None when it is not understood.
- `normalize(analyte, value, unit_text)` gives (value, unit_concept_id, flag) for a measurement of an analyte
  (a measurement concept id or a LOINC code): the value in the analyte's canonical unit when a known factor
  exists, else as sent. Flags: ok, converted, no_unit, unknown_unit, no_factor (the unit fits the analyte's
  kind of quantity but medlake knows no factor), impossible_unit (e.g. glucose in %), out_of_range (the value,
  in the canonical unit, is far outside what the analyte can be: often a unit label that belongs to another
  unit, the 'wrong unit' defect).
- `unit_map_rows()` / `conversion_rows()` / `install(engine)` are the same knowledge as tables
  (`mapping_unit_map`, `mapping_unit_conversion`, `mapping_analyte`) for set-based use in SQL; docs/mapping.md
  shows the join.

Factors: glucose mg/dL = mmol/L × 18.016; creatinine µmol/L = mg/dL × 88.42; cholesterol (total, HDL, LDL)
mg/dL = mmol/L × 38.67; triglycerides mg/dL = mmol/L × 88.57; HbA1c IFCC mmol/mol = (NGSP % − 2.15) × 10.929;
others below with their molar masses. A value is converted only with such a factor or a pure UCUM scale
(g/dL → g/L); never by guessing.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

# --- UCUM units medlake understands: code -> (kind of quantity, scale to the kind's base unit, name) --------------
# Kinds: mass_c (g/L), subst_c (mol/L), num_c (/L), cat_c (U/L), arb_c ([IU]/L), fraction (1), mol_ratio (mol/mol),
# entitic_vol (L), time (s), ...; affine units (Cel, [degF]) are handled apart.
UCUM: dict[str, tuple[str, float, str]] = {}


def _u(code: str, kind: str, scale: float, name: str) -> None:
    UCUM[code] = (kind, scale, name)


for _p, _s in (("", 1.0), ("d", 1e-1), ("c", 1e-2), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15)):
    for _v, _vs in (("L", 1.0), ("dL", 1e-1), ("mL", 1e-3), ("uL", 1e-6)):
        if _p in ("", "m", "u", "n", "p"):
            _u(f"{_p}g/{_v}", "mass_c", _s / _vs, f"{_p}gram per {_v}")
            _u(f"{_p}mol/{_v}", "subst_c", _s / _vs, f"{_p}mole per {_v}")
            _u(f"{_p}eq/{_v}", "subst_c", _s / _vs, f"{_p}equivalent per {_v}")  # monovalent ions: eq = mol
        if _p in ("", "m", "u"):
            _u(f"{_p}[IU]/{_v}", "arb_c", _s / _vs, f"{_p}international unit per {_v}")
            _u(f"{_p}U/{_v}", "cat_c", _s / _vs, f"{_p}enzyme unit per {_v}")
for _n in (3, 6, 9, 12):
    for _v, _vs in (("L", 1.0), ("mL", 1e-3), ("uL", 1e-6)):
        _u(f"10*{_n}/{_v}", "num_c", 10.0 ** _n / _vs, f"10^{_n} per {_v}")
_u("/uL", "num_c", 1e6, "per microliter")
_u("/L", "num_c", 1.0, "per liter")
_u("%", "fraction", 1e-2, "percent")
_u("1", "fraction", 1.0, "unity")
_u("mmol/mol", "mol_ratio", 1e-3, "millimole per mole")
_u("fL", "entitic_vol", 1e-15, "femtoliter")
_u("s", "time", 1.0, "second")
_u("min", "time", 60.0, "minute")
_u("mm/h", "velocity", 1.0, "millimeter per hour")
_u("mL/min/{1.73_m2}", "gfr", 1.0, "milliliter per minute per 1.73 square meter")
_u("mm[Hg]", "pressure", 1.0, "millimeter mercury column")
_u("/min", "rate", 1.0, "per minute")
_u("{beats}/min", "rate", 1.0, "beats per minute")
_u("Cel", "temperature", 1.0, "degree Celsius")
_u("[degF]", "temperature", 1.0, "degree Fahrenheit")
_u("kg", "mass", 1e3, "kilogram")
_u("g", "mass", 1.0, "gram")
_u("[lb_av]", "mass", 453.59237, "pound")
_u("cm", "length", 1e-2, "centimeter")
_u("m", "length", 1.0, "meter")
_u("[in_i]", "length", 2.54e-2, "inch")
_u("kg/m2", "bmi", 1.0, "kilogram per square meter")
_u("{INR}", "inr", 1.0, "international normalized ratio")
_u("{ratio}", "inr", 1.0, "ratio")
_u("[pH]", "ph", 1.0, "pH")
_u("mPa.s", "viscosity", 1.0, "millipascal second")

# Spellings that the generic rules below do not catch (keys compared after `_clean`).
ALIASES = {
    "k/ul": "10*3/uL", "k/μl": "10*3/uL", "thou/ul": "10*3/uL", "m/ul": "10*6/uL", "mil/ul": "10*6/uL",
    "g/l (giga)": "10*9/L", "giga/l": "10*9/L", "gpt/l": "10*9/L", "tpt/l": "10*12/L",
    "%": "%", "percent": "%", "pct": "%", "百分比": "%",
    "fl": "fL", "um3": "fL", "μm3": "fL",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s", "秒": "s", "min": "min", "分钟": "min",
    "mm/h": "mm/h", "mm/hr": "mm/h", "mm/1h": "mm/h", "mm/1hr": "mm/h", "毫米/小时": "mm/h",
    "ml/min/1.73m2": "mL/min/{1.73_m2}", "ml/min/1.73 m2": "mL/min/{1.73_m2}", "ml/min/{1.73_m2}": "mL/min/{1.73_m2}",
    "ml/min/1.73m^2": "mL/min/{1.73_m2}", "ml/min/1.73 m^2": "mL/min/{1.73_m2}",
    "ml/min per 1.73 m2": "mL/min/{1.73_m2}",
    "mmhg": "mm[Hg]", "mm hg": "mm[Hg]", "mm[hg]": "mm[Hg]", "毫米汞柱": "mm[Hg]",
    "/min": "/min", "bpm": "/min", "beats/min": "/min", "次/分": "/min", "次/分钟": "/min", "/分": "/min",
    "breaths/min": "/min", "{beats}/min": "/min", "{breaths}/min": "/min",
    "cel": "Cel", "c": "Cel", "°c": "Cel", "degc": "Cel", "deg c": "Cel", "摄氏度": "Cel",
    "°f": "[degF]", "degf": "[degF]", "f": "[degF]", "[degf]": "[degF]",
    "kg": "kg", "公斤": "kg", "千克": "kg", "g": "g", "克": "g", "lb": "[lb_av]", "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "cm": "cm", "厘米": "cm", "m": "m", "米": "m", "in": "[in_i]", "inch": "[in_i]", "[in_i]": "[in_i]",
    "kg/m2": "kg/m2", "kg/m^2": "kg/m2",
    "inr": "{INR}", "{inr}": "{INR}", "ratio": "{ratio}", "{ratio}": "{ratio}",
    "ph": "[pH]", "[ph]": "[pH]",
    "mmol/mol": "mmol/mol", "mpa.s": "mPa.s", "mpa·s": "mPa.s", "cp": "mPa.s",
    "1": "1", "{ratio}.": "{ratio}",
}
# Chinese words for mass, substance, volume and unit parts of compound units.
_ZH_PARTS = [("毫摩尔", "mmol"), ("微摩尔", "umol"), ("纳摩尔", "nmol"), ("皮摩尔", "pmol"), ("摩尔", "mol"),
             ("毫克", "mg"), ("微克", "ug"), ("纳克", "ng"), ("皮克", "pg"), ("克", "g"),
             ("分升", "dL"), ("毫升", "mL"), ("微升", "uL"), ("升", "L"), ("国际单位", "IU"), ("单位", "U")]
_SUPER = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_POWER = re.compile(r"^(?:[x×*]\s*)?10\s*(?:\^|\*\*|\*|e)?\s*(\d{1,2})\s*/\s*(l|ml|ul)$")
_PREFIX = {"": "", "m": "m", "u": "u", "n": "n", "p": "p", "f": "f", "d": "d", "c": "c", "k": "k"}
_SIMPLE = re.compile(r"^(m|u|n|p|f|k)?(g|mol|eq|iu|u)/(d|m|u)?l$")


def _clean(text: str) -> str:
    s = text.strip()
    # superscript exponents become ^n before NFKC would glue them to the 10 ("×10⁹" -> "×10^9", not "×109")
    s = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+", lambda m: "^" + m.group(0).translate(_SUPER), s)
    s = unicodedata.normalize("NFKC", s)  # full-width, ℃ -> °C, µ (micro sign) -> μ
    s = s.replace("μ", "u").replace("·", ".")
    for zh, en in _ZH_PARTS:
        s = s.replace(zh, en)
    s = re.sub(r"\s+", " ", s).lower()
    return s


@lru_cache(maxsize=4096)
def parse(text: str | None) -> str | None:
    """The UCUM code for a unit as written, or None when medlake does not understand it ('' -> None)."""
    if text is None:
        return None
    if text.strip() in UCUM:
        return text.strip()
    s = _clean(text)
    if not s:
        return None
    if s in ALIASES:
        return ALIASES[s]
    m = _POWER.match(s.replace(" ", ""))
    if m:
        code = f"10*{int(m.group(1))}/{ {'l': 'L', 'ml': 'mL', 'ul': 'uL'}[m.group(2)]}"
        return code if code in UCUM else None
    m = _SIMPLE.match(s.replace(" ", ""))
    if m:
        pre, base, vpre = m.group(1) or "", m.group(2), m.group(3) or ""
        base = {"iu": "[IU]", "u": "U"}.get(base, base)
        if base == "U" and pre == "u":  # "uU/mL" is rare; "u/l" is U/L
            return None
        code = f"{pre}{base}/{vpre}L"
        return code if code in UCUM else None
    return None


def kind(ucum: str | None) -> str | None:
    return UCUM[ucum][0] if ucum in UCUM else None


# --- analytes: what each measures, its canonical unit, factors and plausible range --------------------------------
class Analyte(NamedTuple):
    key: str
    loinc: tuple            # LOINC codes of this analyte (any specimen/method)
    canonical: str          # canonical UCUM unit
    kinds: tuple            # kinds of quantity a value may come in
    lo: float               # plausible values, canonical unit (wide: a patient, not a reference interval)
    hi: float
    mass_per_subst: float = 0.0   # mg/dL per mmol/L (molar mass / 10); 0: unknown
    typical: tuple = ()           # (lo, hi) of the usual adult reference interval, canonical unit


A = Analyte
ANALYTES: list[Analyte] = [
    A("glucose", ("2345-7", "1558-6", "2339-0", "14749-6", "14771-0", "15074-8", "41653-7", "2340-8", "1547-9",
                  "41652-9", "2341-6"),
      "mmol/L", ("subst_c", "mass_c"), 0.5, 60, 18.016, (3.9, 7.8)),
    A("creatinine", ("2160-0", "38483-4", "14682-9", "2164-2"), "umol/L", ("subst_c", "mass_c"), 10, 2500, 1000 / 88.42,
      (45, 115)),
    A("cholesterol", ("2093-3", "14647-2", "2085-9", "14646-4", "13457-7", "2089-1", "18262-6", "22748-8",
                      "39469-2", "18261-8"),
      "mmol/L", ("subst_c", "mass_c"), 0.1, 25, 38.67, (1.0, 5.2)),
    A("triglyceride", ("2571-8", "14927-8", "3043-7"), "mmol/L", ("subst_c", "mass_c"), 0.05, 60, 88.57, (0.45, 1.7)),
    A("hba1c", ("4548-4", "17856-6", "4549-2", "41995-2", "59261-8", "62388-4"), "%", ("fraction", "mol_ratio"),
      2.5, 20, 0.0, (4.0, 6.0)),
    A("urate", ("3084-1", "14933-6"), "umol/L", ("subst_c", "mass_c"), 30, 1500, 1000 / 59.48, (150, 430)),
    A("bilirubin", ("1975-2", "14631-6", "1968-7", "14629-0"), "umol/L", ("subst_c", "mass_c"), 0.5, 800, 1000 / 17.1,
      (3, 21)),
    A("calcium", ("17861-6", "2000-8", "1994-3"), "mmol/L", ("subst_c", "mass_c"), 0.8, 5, 4.008, (2.1, 2.6)),
    A("magnesium", ("19123-9", "2601-3", "2593-1"), "mmol/L", ("subst_c", "mass_c"), 0.2, 5, 2.431, (0.7, 1.05)),
    A("urea_nitrogen", ("3094-0", "14937-7", "6299-2"), "mmol/L", ("subst_c", "mass_c"), 0.5, 100, 2.8, (2.5, 8.0)),
    A("free_t4", ("3024-7", "14920-3"), "pmol/L", ("subst_c", "mass_c"), 1, 150, 1000 / 12.87, (10, 23)),
    A("sodium", ("2951-2", "2947-0"), "mmol/L", ("subst_c", "mass_c"), 90, 200, 0.0, (135, 147)),
    A("potassium", ("2823-3", "6298-4"), "mmol/L", ("subst_c",), 1, 12, 0.0, (3.5, 5.3)),
    A("chloride", ("2075-0", "2069-3"), "mmol/L", ("subst_c",), 60, 150, 0.0, (98, 110)),
    A("hemoglobin", ("718-7", "20509-6", "30313-1"), "g/L", ("mass_c",), 20, 260, 0.0, (115, 175)),
    A("albumin", ("1751-7", "2862-1", "61151-7"), "g/L", ("mass_c",), 5, 70, 0.0, (35, 55)),
    A("protein", ("2885-2", "2881-1"), "g/L", ("mass_c",), 20, 130, 0.0, (60, 85)),
    A("leukocytes", ("6690-2", "26464-8", "804-5"), "10*9/L", ("num_c",), 0.1, 500, 0.0, (3.5, 10)),
    A("erythrocytes", ("789-8", "26453-1"), "10*12/L", ("num_c",), 0.5, 9, 0.0, (3.8, 5.9)),
    A("platelets", ("777-3", "26515-7"), "10*9/L", ("num_c",), 1, 2000, 0.0, (125, 400)),
    A("neutrophils", ("751-8", "26499-4"), "10*9/L", ("num_c",), 0, 100, 0.0, (1.8, 7)),
    A("lymphocytes", ("731-0", "26474-7"), "10*9/L", ("num_c",), 0, 100, 0.0, (1.0, 3.5)),
    A("hematocrit", ("4544-3", "20570-8"), "%", ("fraction",), 5, 80, 0.0, (35, 52)),
    A("mcv", ("787-2", "30428-7"), "fL", ("entitic_vol",), 40, 150, 0.0, (80, 100)),
    A("egfr", ("33914-3", "48642-3", "48643-1", "62238-1", "98979-8"), "mL/min/{1.73_m2}", ("gfr",), 1, 200, 0.0,
      (90, 130)),
    A("alt", ("1742-6", "1743-4", "76625-3"), "U/L", ("cat_c", "arb_c"), 1, 10000, 0.0, (7, 50)),
    A("ast", ("1920-8", "30239-8"), "U/L", ("cat_c", "arb_c"), 1, 10000, 0.0, (10, 40)),
    A("alp", ("6768-6",), "U/L", ("cat_c", "arb_c"), 5, 3000, 0.0, (40, 130)),
    A("ggt", ("2324-2",), "U/L", ("cat_c", "arb_c"), 1, 3000, 0.0, (8, 60)),
    A("ck_mb", ("13969-1", "32673-6"), "U/L", ("cat_c", "arb_c"), 0, 1000, 0.0, (0, 25)),
    A("tsh", ("3016-3", "11580-8"), "m[IU]/L", ("arb_c",), 0.001, 200, 0.0, (0.3, 4.5)),
    A("hcg", ("19080-1", "21198-7", "2106-3"), "m[IU]/mL", ("arb_c",), 0, 500000, 0.0, (0, 5)),
    A("crp", ("1988-5", "30522-7", "76485-2"), "mg/L", ("mass_c",), 0, 600, 0.0, (0, 10)),
    A("esr", ("30341-2", "4537-7"), "mm/h", ("velocity",), 0, 150, 0.0, (0, 20)),
    A("pt", ("5902-2", "5964-2"), "s", ("time",), 5, 150, 0.0, (9, 13)),
    A("inr", ("6301-6", "34714-6"), "{INR}", ("inr",), 0.5, 15, 0.0, (0.8, 1.2)),
    A("aptt", ("3173-2", "14979-9"), "s", ("time",), 10, 200, 0.0, (25, 40)),
    A("troponin_i", ("10839-9", "42757-5", "89579-7"), "ng/mL", ("mass_c",), 0, 500, 0.0, (0, 0.04)),
    A("nt_probnp", ("33762-6", "71425-3"), "pg/mL", ("mass_c",), 0, 100000, 0.0, (0, 125)),
    A("ferritin", ("2276-4", "20567-4"), "ug/L", ("mass_c",), 0.5, 20000, 0.0, (20, 400)),
    A("afp", ("1834-1", "19176-7"), "ug/L", ("mass_c",), 0, 100000, 0.0, (0, 8)),
    A("cea", ("2039-6",), "ug/L", ("mass_c",), 0, 10000, 0.0, (0, 5)),
    A("psa", ("2857-1", "10886-0"), "ug/L", ("mass_c",), 0, 10000, 0.0, (0, 4)),
    A("specific_gravity", ("5811-5", "2965-2"), "1", ("fraction",), 1.0, 1.06, 0.0, (1.003, 1.03)),
    A("urine_ph", ("5803-2", "2756-5"), "[pH]", ("ph",), 4, 9.5, 0.0, (4.5, 8)),
    A("systolic_bp", ("8480-6",), "mm[Hg]", ("pressure",), 40, 300, 0.0, (90, 140)),
    A("diastolic_bp", ("8462-4",), "mm[Hg]", ("pressure",), 20, 200, 0.0, (60, 90)),
    A("heart_rate", ("8867-4",), "/min", ("rate",), 20, 300, 0.0, (60, 100)),
    A("resp_rate", ("9279-1",), "/min", ("rate",), 4, 80, 0.0, (12, 20)),
    A("body_temp", ("8310-5", "8331-1"), "Cel", ("temperature",), 25, 45, 0.0, (36, 37.5)),
    A("spo2", ("59408-5", "2708-6"), "%", ("fraction",), 40, 100, 0.0, (95, 100)),
    A("body_weight", ("29463-7", "3141-9"), "kg", ("mass",), 0.3, 400, 0.0, (45, 100)),
    A("body_height", ("8302-2", "3137-7"), "cm", ("length",), 20, 250, 0.0, (140, 200)),
    A("bmi", ("39156-5",), "kg/m2", ("bmi",), 8, 90, 0.0, (18.5, 25)),
]
BY_LOINC = {code: a for a in ANALYTES for code in a.loinc}
BY_KEY = {a.key: a for a in ANALYTES}


def _affine(src: str, dst: str) -> tuple[float, float] | None:
    """value_dst = value_src * factor + offset for the non-proportional pairs."""
    if (src, dst) == ("[degF]", "Cel"):
        return 5 / 9, -32 * 5 / 9
    if (src, dst) == ("Cel", "[degF]"):
        return 9 / 5, 32.0
    return None


def factor(analyte: Analyte | None, src: str, dst: str) -> tuple[float, float] | None:
    """(factor, offset) so that value in dst = value in src * factor + offset; None when not known."""
    if src == dst:
        return 1.0, 0.0
    if src not in UCUM or dst not in UCUM:
        return None
    ks, ss, _ = UCUM[src]
    kd, sd, _ = UCUM[dst]
    if ks == kd == "temperature":
        return _affine(src, dst)
    if ks == kd:
        return ss / sd, 0.0
    if analyte is None:
        return None
    if analyte.key == "hba1c" and {src, dst} == {"%", "mmol/mol"}:
        # IFCC (mmol/mol) = (NGSP % - 2.15) * 10.929
        return (10.929, -2.15 * 10.929) if src == "%" else (1 / 10.929, 2.15)
    if {ks, kd} == {"cat_c", "arb_c"} and UCUM[analyte.canonical][0] == "cat_c":
        return ss / sd, 0.0  # enzyme activity: the international unit (IU) is the enzyme unit (U)
    if analyte.mass_per_subst and {ks, kd} == {"mass_c", "subst_c"}:
        # mass_per_subst: mg/dL per mmol/L; g/L per mol/L = molar mass = mass_per_subst * 10... scale through bases
        g_per_mol = analyte.mass_per_subst * 10.0  # (mg/dL)/(mmol/L) * 10 = g/mol
        if ks == "subst_c":
            return ss * g_per_mol / sd, 0.0
        return ss / g_per_mol / sd, 0.0
    return None


def analyte_of(loinc_code: str | None = None, name: str | None = None) -> Analyte | None:
    """The analyte of a LOINC code (or, for a LOINC concept name medlake's table lacks, its component)."""
    if loinc_code and loinc_code in BY_LOINC:
        return BY_LOINC[loinc_code]
    if name:
        n = name.lower()
        for key, words in _NAME_COMPONENTS:
            if n.startswith(words):
                return BY_KEY[key]
    return None


_NAME_COMPONENTS = [("glucose", "glucose ["), ("creatinine", "creatinine ["), ("cholesterol", "cholesterol"),
                    ("triglyceride", "triglyceride ["), ("hba1c", "hemoglobin a1c"), ("urate", "urate ["),
                    ("bilirubin", "bilirubin.total ["), ("urea_nitrogen", "urea nitrogen ["), ("sodium", "sodium ["),
                    ("potassium", "potassium ["), ("chloride", "chloride ["), ("calcium", "calcium ["),
                    ("magnesium", "magnesium [")]


class Normalized(NamedTuple):
    value: float | None
    unit_concept_id: int
    ucum: str | None
    flag: str       # ok | converted | no_unit | unknown_unit | no_factor | impossible_unit | out_of_range


class Units:
    """Unit concepts and analytes of one vocabulary (the store's, or the shipped demo vocabulary)."""

    def __init__(self, unit_ids: dict[str, int], analytes: dict[int, Analyte]):
        self.unit_ids = unit_ids      # UCUM code -> unit concept id
        self.analytes = analytes      # measurement concept id -> analyte

    @classmethod
    def from_rows(cls, concepts) -> "Units":
        """From concept rows (dicts with concept_id, concept_name, vocabulary_id, concept_code, standard_concept)."""
        unit_ids, analytes = {}, {}
        for c in concepts:
            if c["vocabulary_id"] == "UCUM" and c.get("standard_concept") == "S":
                unit_ids[c["concept_code"].replace("[iU]", "[IU]")] = int(c["concept_id"])  # Athena writes [iU]
            elif c["vocabulary_id"] == "LOINC":
                a = analyte_of(c["concept_code"], c["concept_name"])
                if a:
                    analytes[int(c["concept_id"])] = a
        return cls(unit_ids, analytes)

    @classmethod
    def from_engine(cls, engine) -> "Units":
        t = engine.query("SELECT concept_id, concept_name, vocabulary_id, concept_code, standard_concept FROM concept "
                         "WHERE vocabulary_id IN ('UCUM', 'LOINC')")
        return cls.from_rows(t.to_pylist())

    def analyte(self, analyte) -> Analyte | None:
        if isinstance(analyte, Analyte) or analyte is None:
            return analyte
        if isinstance(analyte, int):
            return self.analytes.get(analyte)
        return BY_LOINC.get(str(analyte)) or BY_KEY.get(str(analyte))

    def unit_concept(self, ucum: str | None) -> int:
        if ucum is None:
            return 0
        if ucum in self.unit_ids:
            return self.unit_ids[ucum]
        for other, cid in self.unit_ids.items():  # an equal unit under another code (u[IU]/mL = m[IU]/L)
            f = factor(None, ucum, other)
            if f == (1.0, 0.0) or f and abs(f[0] - 1) < 1e-9 and f[1] == 0:
                return cid
        return 0

    def normalize(self, analyte, value: float | None, unit_text: str | None, convert: bool = True) -> Normalized:
        """A measurement's value and unit concept, in the analyte's canonical unit when a factor is known."""
        a = self.analyte(analyte)
        if unit_text is None or not str(unit_text).strip():
            return Normalized(value, 0, None, "no_unit")
        ucum = parse(str(unit_text))
        if ucum is None:
            return Normalized(value, 0, None, "unknown_unit")
        if a is None:
            return Normalized(value, self.unit_concept(ucum), ucum, "ok")
        if kind(ucum) not in a.kinds and not (ucum == a.canonical):
            return Normalized(value, self.unit_concept(ucum), ucum, "impossible_unit")
        f = factor(a, ucum, a.canonical)
        if f is None:
            return Normalized(value, self.unit_concept(ucum), ucum, "no_factor")
        canon = value * f[0] + f[1] if value is not None else None
        if canon is not None and not (a.lo <= canon <= a.hi):
            return Normalized(value, self.unit_concept(ucum), ucum, "out_of_range")
        if not convert or ucum == a.canonical:
            return Normalized(value, self.unit_concept(ucum), ucum, "ok")
        return Normalized(_round(canon), self.unit_concept(a.canonical), a.canonical, "converted")

    def fits(self, analyte, unit_text: str | None, value: float | None = None) -> str:
        """How a source unit (and a typical value) fits an analyte: fits | typical | implausible | impossible |
        unknown (used as suggestion evidence)."""
        a = self.analyte(analyte)
        if a is None:
            return "unknown"
        n = self.normalize(a, value, unit_text)
        if n.flag == "impossible_unit":
            return "impossible"
        if n.flag == "out_of_range":
            return "implausible"
        if n.flag in ("no_unit", "unknown_unit", "no_factor"):
            return "unknown"
        if value is not None and a.typical:
            v = n.value if n.flag == "converted" else value * (factor(a, n.ucum, a.canonical) or (1, 0))[0] + (
                factor(a, n.ucum, a.canonical) or (1, 0))[1]
            lo, hi = a.typical
            width = hi - lo
            if lo - width <= v <= hi + 2 * width:
                return "typical"
        return "fits"

    # -- the same knowledge as tables ------------------------------------------------------------------------------
    def unit_map_rows(self, extra_texts=()) -> list[dict]:
        """One row per unit spelling medlake knows (and each extra text): unit_source_value, ucum, unit_concept_id."""
        texts = set(UCUM) | set(ALIASES) | {t for t in extra_texts if t}
        rows = []
        for t in sorted(texts):
            u = parse(t)
            rows.append({"unit_source_value": t, "ucum": u, "unit_concept_id": self.unit_concept(u)})
        return rows

    def conversion_rows(self) -> list[dict]:
        """Every (measurement concept, unit concept) pair medlake can put in the canonical unit, with the factor:
        value_as_number = value_source * factor + shift. A measurement concept in `mapping_analyte` whose unit has
        no row here is an impossible or unconvertible pair."""
        rows = []
        units = [(u, cid) for u, cid in self.unit_ids.items() if u in UCUM]
        for mcid, a in sorted(self.analytes.items()):
            to = self.unit_concept(a.canonical)
            for u, ucid in units:
                if kind(u) not in a.kinds and u != a.canonical:
                    continue
                f = factor(a, u, a.canonical)
                if f is None or not to:
                    continue
                rows.append({"measurement_concept_id": mcid, "from_unit_concept_id": ucid,
                             "to_unit_concept_id": to, "factor": f[0], "shift": f[1]})
        return rows

    def analyte_rows(self) -> list[dict]:
        return [{"measurement_concept_id": mcid, "analyte": a.key, "canonical_ucum": a.canonical,
                 "canonical_unit_concept_id": self.unit_concept(a.canonical), "plausible_low": float(a.lo),
                 "plausible_high": float(a.hi)} for mcid, a in sorted(self.analytes.items())]


def _round(v: float) -> float:
    return float(f"{v:.6g}")


@lru_cache(maxsize=1)
def demo() -> Units:
    """Units over the shipped demo vocabulary (for code and tests without a store)."""
    import csv

    from medlake.cdm.vocab import demo_vocabulary_dir

    with open(demo_vocabulary_dir() / "CONCEPT.csv", encoding="utf-8") as f:
        return Units.from_rows(csv.DictReader(f, delimiter="\t"))


def normalize(analyte, value: float | None, unit_text: str | None, units: Units | None = None,
              convert: bool = True) -> Normalized:
    """`Units.normalize` over the demo vocabulary unless `units` is given (e.g. `Units.from_engine(engine)`)."""
    return (units or demo()).normalize(analyte, value, unit_text, convert)


def install(engine, units: Units | None = None, extra_texts=()) -> dict[str, int]:
    """Write mapping_unit_map, mapping_unit_conversion and mapping_analyte (replaced) for set-based use."""
    import pyarrow as pa

    u = units or Units.from_engine(engine)
    tables = {
        "mapping_unit_map": (u.unit_map_rows(extra_texts), pa.schema([
            ("unit_source_value", pa.string()), ("ucum", pa.string()), ("unit_concept_id", pa.int64())])),
        "mapping_unit_conversion": (u.conversion_rows(), pa.schema([
            ("measurement_concept_id", pa.int64()), ("from_unit_concept_id", pa.int64()),
            ("to_unit_concept_id", pa.int64()), ("factor", pa.float64()), ("shift", pa.float64())])),
        "mapping_analyte": (u.analyte_rows(), pa.schema([
            ("measurement_concept_id", pa.int64()), ("analyte", pa.string()), ("canonical_ucum", pa.string()),
            ("canonical_unit_concept_id", pa.int64()), ("plausible_low", pa.float64()),
            ("plausible_high", pa.float64())])),
    }
    counts = {}
    with engine.transaction():
        for name, (rows, schema) in tables.items():
            engine.execute(f"DROP TABLE IF EXISTS {name}")
            from medlake.mapping.store import create_table
            create_table(engine, name, schema)
            engine.load_arrow(name, pa.Table.from_pylist(rows, schema=schema))
            counts[name] = len(rows)
    return counts
