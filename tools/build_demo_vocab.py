"""Build the demo vocabulary shipped in src/medlake/cdm/demo_vocab/ (Athena format: tab-separated, YYYYMMDD).

Run: python tools/build_demo_vocab.py

Concepts come from three places:
- the OMOP-owned vocabularies below (Gender, Race, Ethnicity, Visit, Type Concept, Domain, UCUM units);
- the fhir2omop vocabulary seed (../shared/fhir2omop/vocab_seed, concepts as published in OHDSI Athena);
- the simulated hospital's clinical catalog (`medlake.simulate.catalog.demo_vocabulary()`), when present.
Concepts that are not taken from Athena carry ids >= 2,000,000,000 (OMOP's range for local concepts).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "medlake" / "cdm" / "demo_vocab"
SEED = ROOT.parent / "shared" / "fhir2omop" / "vocab_seed"
sys.path.insert(0, str(ROOT / "src"))

RELEASE = "DEMO 2026-11 (medlake demo subset)"
START, END = "19700101", "20991231"

VOCABULARIES = [
    # vocabulary_id, name, reference, vocabulary_concept_id
    ("None", "OMOP Standardized Vocabularies", "OMOP generated", 44819096),
    ("Domain", "OMOP Domain", "OMOP generated", 44819147),
    ("Vocabulary", "OMOP Vocabulary", "OMOP generated", 44819232),
    ("Concept Class", "OMOP Concept Class", "OMOP generated", 44819233),
    ("Relationship", "OMOP Relationship", "OMOP generated", 44819235),
    ("Gender", "OMOP Gender", "OMOP generated", 44819108),
    ("Race", "Race and Ethnicity Code Set (USBC)", "https://www.cdc.gov/nchs/data/dvs/Race_Ethnicity_CodeSet.pdf", 44819109),
    ("Ethnicity", "OMOP Ethnicity", "OMOP generated", 44819134),
    ("Visit", "OMOP Visit", "OMOP generated", 44819119),
    ("Type Concept", "OMOP Type Concept", "OMOP generated", 32808),
    ("UCUM", "Unified Code for Units of Measure (Regenstrief Institute)", "http://aurora.regenstrief.org/~ucum/ucum.html", 44819107),
    ("SNOMED", "Systematic Nomenclature of Medicine - Clinical Terms (IHTSDO)", "http://www.snomed.org/", 44819097),
    ("ICD10CM", "International Classification of Diseases, Tenth Revision, Clinical Modification (NCHS)", "http://www.cdc.gov/nchs/icd/icd10cm.htm", 44819098),
    ("ICD10", "International Classification of Diseases, Tenth Revision (WHO)", "http://www.who.int/classifications/icd/icdonlineversions/en/", 44819124),
    ("ICD10CN", "International Classification of Diseases, Tenth Revision, Chinese Edition", "http://www.sac.gov.cn/", 32740),
    ("LOINC", "Logical Observation Identifiers Names and Codes (Regenstrief Institute)", "http://loinc.org/", 44819102),
    ("RxNorm", "RxNorm (NLM)", "http://www.nlm.nih.gov/research/umls/rxnorm/", 44819104),
    ("RxNorm Extension", "OMOP RxNorm Extension", "OMOP generated", 252),
    ("CVX", "CDC Vaccine Administered CVX (NCIRD)", "https://www2a.cdc.gov/vaccines/iis/iisstandards/vaccines.asp", 581400),
    ("Condition Status", "OMOP Condition Status", "OMOP generated", 32887),
    ("Drug Type", "OMOP Drug Exposure Type", "OMOP generated", 44819126),
    ("Obs Period Type", "OMOP Observation Period Type", "OMOP generated", 44819149),
    ("CMS Place of Service", "Place of Service Codes for Professional Claims (CMS)", "http://www.cms.gov/", 44819110),
    ("OMOP Extension", "OMOP Extension (OHDSI)", "OMOP generated", 32758),
    ("HCPCS", "Healthcare Common Procedure Coding System (CMS)", "http://www.nlm.nih.gov/research/umls/sourcereleasedocs/current/HCPCS/", 44819101),
    ("NDC", "National Drug Code (FDA and manufacturers)", "http://www.fda.gov/", 44819105),
    ("Medicare Specialty", "Medicare provider/supplier specialty codes (CMS)", "http://www.cms.gov/", 44819138),
    ("Metadata", "Metadata", "OMOP generated", 32675),
    ("CDM", "OMOP Common DataModel", "https://github.com/OHDSI/CommonDataModel", 2_000_000_900),  # local id
    ("Language", "Languages (demo subset: SNOMED language qualifiers)", "demo", 2_000_000_901),  # local id
]

DOMAINS = ["Metadata", "Condition", "Drug", "Procedure", "Measurement", "Observation", "Device", "Visit",
           "Gender", "Race", "Ethnicity", "Unit", "Type Concept", "Meas Value", "Meas Value Operator",
           "Note", "Specimen", "Spec Anatomic Site", "Provider", "Condition Status", "Geography", "Language",
           "Route", "Relationship", "Domain", "Vocabulary", "Concept Class"]

RELATIONSHIPS = [
    # id, name, hierarchical, defines_ancestry, reverse, relationship_concept_id
    ("Maps to", "Non-standard to Standard map (OMOP)", "0", "0", "Mapped from", 44818977),
    ("Mapped from", "Standard to Non-standard map (OMOP)", "0", "0", "Maps to", 44818769),
    ("Is a", "Is a", "1", "1", "Subsumes", 44818821),
    ("Subsumes", "Subsumes", "1", "1", "Is a", 44818723),
    ("Maps to value", "Maps to value (OMOP)", "0", "0", "Value mapped from", 44818978),
    ("Value mapped from", "Value mapped from (OMOP)", "0", "0", "Maps to value", 44818770),
    ("Has ingredient", "Has ingredient (RxNorm)", "0", "1", "RxNorm ing of", 44818790),
    ("RxNorm ing of", "Ingredient of (RxNorm)", "0", "0", "Has ingredient", 44818692),
]

OMOP_CONCEPTS = [
    # concept_id, name, domain, vocabulary, class, standard, code
    (0, "No matching concept", "Metadata", "None", "Undefined", "", "No matching concept"),
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    (8551, "UNKNOWN", "Gender", "Gender", "Gender", "", "U"),
    (8521, "OTHER", "Gender", "Gender", "Gender", "", "O"),
    (8515, "Asian", "Race", "Race", "Race", "S", "2"),
    (8516, "Black or African American", "Race", "Race", "Race", "S", "3"),
    (8527, "White", "Race", "Race", "Race", "S", "5"),
    (8557, "Native Hawaiian or Other Pacific Islander", "Race", "Race", "Race", "S", "4"),
    (8657, "American Indian or Alaska Native", "Race", "Race", "Race", "S", "1"),
    (38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Hispanic"),
    (38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Not Hispanic"),
    (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "S", "IP"),
    (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
    (9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "S", "ER"),
    (262, "Emergency Room and Inpatient Visit", "Visit", "Visit", "Visit", "S", "ERIP"),
    (581477, "Office Visit", "Visit", "Visit", "Visit", "S", "OMOP4822458"),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    (32827, "EHR encounter record", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976900"),
    (32818, "EHR administration record", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976891"),
    (32825, "EHR dispensing record", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976898"),
    (32838, "EHR prescription", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976911"),
    (32840, "EHR problem list", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976913"),
    (32856, "Lab", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976929"),
    (32893, "Confirmed diagnosis", "Condition Status", "Condition Status", "Condition Status", "S", "OMOP4976963"),
    (32899, "Preliminary diagnosis", "Condition Status", "Condition Status", "Condition Status", "S", "OMOP4976969"),
    (44814724, "Period covering healthcare encounters", "Type Concept", "Obs Period Type", "Obs Period Type", "", "OMOP4822291"),
    (8840, "milligram per deciliter", "Unit", "UCUM", "Unit", "S", "mg/dL"),
    (8753, "millimole per liter", "Unit", "UCUM", "Unit", "S", "mmol/L"),
    (8554, "percent", "Unit", "UCUM", "Unit", "S", "%"),
    (8876, "millimeter mercury column", "Unit", "UCUM", "Unit", "S", "mm[Hg]"),
    (8541, "per minute", "Unit", "UCUM", "Unit", "S", "/min"),
    (586323, "degree Celsius", "Unit", "UCUM", "Unit", "S", "Cel"),
    (9529, "kilogram", "Unit", "UCUM", "Unit", "S", "kg"),
    (8582, "centimeter", "Unit", "UCUM", "Unit", "S", "cm"),
    (8749, "micromole per liter", "Unit", "UCUM", "Unit", "S", "umol/L"),
    (8713, "gram per deciliter", "Unit", "UCUM", "Unit", "S", "g/dL"),
    (8636, "gram per liter", "Unit", "UCUM", "Unit", "S", "g/L"),
    (8848, "thousand per microliter", "Unit", "UCUM", "Unit", "S", "10*3/uL"),
    (8576, "milligram", "Unit", "UCUM", "Unit", "S", "mg"),
    (8587, "milliliter", "Unit", "UCUM", "Unit", "S", "mL"),
    # as Athena codes it ([iU], UCUM's other case-sensitive symbol of [IU]); DQD allows it for the enzyme labs
    (8923, "international unit per liter", "Unit", "UCUM", "Unit", "S", "[iU]/L"),
    # The CDM version cdm_source.cdm_version_concept_id names (the transform writes 756265 for v5.4).
    (756265, "OMOP CDM Version 5.4.0", "Metadata", "CDM", "CDM", "S", "CDM v5.4.0"),
    # Languages of notes and synonyms (the transform and the catalog use these Athena ids). Their SNOMED
    # codes are not given by a source in ../shared, so the demo carries them under a "Language" vocabulary
    # with ISO 639-1 codes; an Athena download has them as SNOMED qualifier values.
    (4182948, "Chinese language", "Language", "Language", "Qualifier Value", "S", "zh"),
    (4180186, "English language", "Language", "Language", "Qualifier Value", "S", "en"),
]


def rows_from_seed():
    path = SEED / "concept.csv"
    if not path.exists():
        return [], []
    concepts = [
        (int(r["concept_id"]), r["concept_name"], r["domain_id"], r["vocabulary_id"], r["concept_class_id"],
         r["standard_concept"], r["concept_code"])
        for r in csv.DictReader(open(path, encoding="utf-8"))
    ]
    rels = [
        (int(r["concept_id_1"]), int(r["concept_id_2"]), r["relationship_id"])
        for r in csv.DictReader(open(SEED / "concept_relationship.csv", encoding="utf-8"))
    ]
    return concepts, rels


def write(name: str, header: list[str], rows) -> int:
    rows = list(rows)
    with open(OUT / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join("" if v is None else str(v) for v in r) + "\n")
    return len(rows)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    concepts: dict[int, tuple] = {}
    rels: set[tuple] = set()
    ancestors: set[tuple] = set()
    synonyms: set[tuple] = set()
    seed_c, seed_r = rows_from_seed()
    for c in OMOP_CONCEPTS + seed_c:
        concepts.setdefault(c[0], c)
    rels.update(seed_r)
    try:
        from medlake.simulate.catalog import demo_vocabulary
    except ImportError:
        demo_vocabulary = None
    if demo_vocabulary:
        extra = demo_vocabulary()
        for c in extra["concepts"]:
            concepts.setdefault(c[0], c)
        rels.update(extra.get("relationships", []))
        ancestors.update(extra.get("ancestors", []))
        synonyms.update(extra.get("synonyms", []))
    # Every standard concept maps to itself and is its own ancestor, as in Athena.
    for cid, *_rest in concepts.values():
        if concepts[cid][5] == "S":
            rels.add((cid, cid, "Maps to"))
            ancestors.add((cid, cid, 0, 0))
    # Reverse relationships, as Athena ships both directions.
    reverse = {r[0]: r[4] for r in RELATIONSHIPS}
    for a, b, rel in list(rels):
        if rel in reverse and a != b:
            rels.add((b, a, reverse[rel]))
    # Metadata concepts Athena carries for every vocabulary and relationship (vocabulary_concept_id and
    # relationship_concept_id point at them).
    for v, name, _ref, cid in VOCABULARIES:
        concepts.setdefault(cid, (cid, name, "Metadata", "Vocabulary", "Vocabulary", "", "OMOP generated"))
    for _rid, name, _h, _d, _rev, cid in RELATIONSHIPS:
        concepts.setdefault(cid, (cid, name, "Metadata", "Relationship", "Relationship", "", "OMOP generated"))
    known = set(concepts)
    vocab_rows = [(v, n, ref, RELEASE if v == "None" else "demo", cid) for v, n, ref, cid in VOCABULARIES]
    used_vocabs = {c[3] for c in concepts.values()}
    missing = used_vocabs - {v[0] for v in VOCABULARIES}
    if missing:
        raise SystemExit(f"vocabularies used but not declared: {sorted(missing)}")
    classes = sorted({c[4] for c in concepts.values()})
    domains = sorted(set(DOMAINS) | {c[2] for c in concepts.values()})
    n = write("CONCEPT", ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
                          "standard_concept", "concept_code", "valid_start_date", "valid_end_date", "invalid_reason"],
              [(*c, START, END, "") for c in sorted(concepts.values())])
    write("CONCEPT_RELATIONSHIP", ["concept_id_1", "concept_id_2", "relationship_id", "valid_start_date",
                                   "valid_end_date", "invalid_reason"],
          [(a, b, r, START, END, "") for a, b, r in sorted(rels) if a in known and b in known])
    write("CONCEPT_ANCESTOR", ["ancestor_concept_id", "descendant_concept_id", "min_levels_of_separation",
                               "max_levels_of_separation"],
          sorted(a for a in ancestors if a[0] in known and a[1] in known))
    write("CONCEPT_SYNONYM", ["concept_id", "concept_synonym_name", "language_concept_id"],
          sorted(s for s in synonyms if s[0] in known))
    write("VOCABULARY", ["vocabulary_id", "vocabulary_name", "vocabulary_reference", "vocabulary_version",
                         "vocabulary_concept_id"], vocab_rows)
    write("DOMAIN", ["domain_id", "domain_name", "domain_concept_id"], [(d, d, 0) for d in domains])
    write("CONCEPT_CLASS", ["concept_class_id", "concept_class_name", "concept_class_concept_id"],
          [(c, c, 0) for c in classes])
    write("RELATIONSHIP", ["relationship_id", "relationship_name", "is_hierarchical", "defines_ancestry",
                           "reverse_relationship_id", "relationship_concept_id"], RELATIONSHIPS)
    print(f"demo vocabulary: {n} concepts -> {OUT}")


if __name__ == "__main__":
    main()
