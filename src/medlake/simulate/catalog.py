"""The simulated hospital's clinical catalog: conditions, lab tests, vitals, drugs, procedures, vaccines,
allergies and note types, with their standard codes and the concepts of the demo vocabulary.

Codes (SNOMED CT, ICD-10-CM, LOINC, RxNorm, CVX, UCUM) are the real published codes. Concept ids are real
OMOP (Athena) ids only where a source gives them (written out in KNOWN_IDS below: the fhir2omop vocabulary
seed, the foundation's OMOP list, DQD's Concept_Level file for LOINC labs and vitals, the UCUM unit ids DQD's
unit lists use); every other concept gets an id >= 2,000,000,000, OMOP's range for local concepts,
assigned from the fixed bases below by position. Lists are APPEND-ONLY: never reorder or delete a row,
or the local ids shift.

ICD10CN codes (`E11.900x001` style) are illustrative codes in the style of the Chinese national clinical
edition; they map to the same SNOMED concept as the ICD-10-CM code.
"""
from __future__ import annotations

from typing import NamedTuple

CHINESE, ENGLISH = 4182948, 4180186  # language_concept_id for synonyms


class Condition(NamedTuple):
    key: str
    en: str
    zh: str
    snomed: str
    icd10cm: str
    icd10cm_name: str
    icd10cn: str
    kind: str                 # chronic | acute | pregnancy | cancer
    rate: float               # chronic/cancer: lifetime share of adults; acute: episodes per person-year
    labs: tuple = ()
    drugs: tuple = ()
    procs: tuple = ()
    inpatient: float = 0.0    # share of episodes (acute) or of years (chronic) with an inpatient stay
    lethal: float = 0.0       # chance an inpatient stay for it ends in death
    abnormal: tuple = ()      # ((lab, mean, sd), ...) values in SI units for patients with the condition
    sex: str = ""             # "F" / "M" when only one sex has it
    since: str = ""           # first date it can occur (ISO)


class Lab(NamedTuple):
    key: str
    en: str                   # LOINC long common name
    loinc: str
    abbr: str                 # local abbreviation used by the English-style LIS
    zh: str                   # local Chinese name
    unit: str                 # SI unit, UCUM
    lo: float                 # reference range in SI units
    hi: float
    digits: int               # decimals reported
    conv_unit: str = ""       # conventional (US) unit, UCUM; "" when the same as SI
    conv_factor: float = 1.0  # conventional value = SI value * factor


class Drug(NamedTuple):
    key: str
    en: str                   # RxNorm ingredient name (or clinical drug name for seed concepts)
    zh: str
    rxnorm: str
    strength: str             # local packaging text, e.g. "0.5g" / "500 mg"
    form: str                 # tablet | capsule | injection | inhaler
    route: str                # PO | IV | SC | INH | IM
    daily: int                # units per day
    concept_class: str = "Ingredient"


class Procedure(NamedTuple):
    key: str
    en: str
    zh: str
    snomed: str


class Vaccine(NamedTuple):
    key: str
    en: str
    zh: str
    cvx: str


class Vital(NamedTuple):
    key: str
    en: str
    loinc: str
    zh: str
    unit: str
    mean: float
    sd: float
    digits: int


class Unit(NamedTuple):
    ucum: str
    name: str
    local_styles: tuple       # how hospital systems write it (first = the English-style LIS spelling)


# Real Athena concept ids we are sure of (from the fhir2omop vocabulary seed, or the foundation's OMOP list in
# tools/build_demo_vocab.py). Keyed by (vocabulary_id, concept_code).
KNOWN_IDS = {
    ("SNOMED", "44054006"): 201826, ("SNOMED", "59621000"): 320128, ("SNOMED", "73211009"): 201820,
    ("ICD10CM", "I10"): 35207668,
    ("LOINC", "2339-0"): 3000483, ("LOINC", "8480-6"): 3004249, ("LOINC", "8462-4"): 3012888,
    ("LOINC", "34117-2"): 3030023, ("LOINC", "51847-2"): 3041851,
    ("RxNorm", "313782"): 1127433, ("RxNorm", "1665060"): 46287345, ("RxNorm", "7984"): 1729720,
    ("SNOMED", "762952008"): 42538933, ("SNOMED", "264287008"): 4138133,
    ("UCUM", "mg/dL"): 8840, ("UCUM", "mmol/L"): 8753, ("UCUM", "%"): 8554, ("UCUM", "mm[Hg]"): 8876,
    ("UCUM", "/min"): 8541, ("UCUM", "Cel"): 586323, ("UCUM", "kg"): 9529, ("UCUM", "cm"): 8582,
    ("UCUM", "umol/L"): 8749, ("UCUM", "g/dL"): 8713, ("UCUM", "g/L"): 8636, ("UCUM", "10*3/uL"): 8848,
    ("UCUM", "mg"): 8576, ("UCUM", "mL"): 8587,
    # LOINC labs and vitals: the Athena conceptId that OHDSI DataQualityDashboard's Concept_Level CSV
    # (src/medlake/quality/dqd/OMOP_CDMv5.4_Concept_Level.csv) lists under the same LOINC long common name
    # (tests/unit/test_quality_checks.py keeps each pair equal to that file).
    ("LOINC", "2345-7"): 3004501, ("LOINC", "4548-4"): 3004410, ("LOINC", "6690-2"): 3000905,
    ("LOINC", "789-8"): 3020416, ("LOINC", "718-7"): 3000963, ("LOINC", "4544-3"): 3023314,
    ("LOINC", "777-3"): 3024929, ("LOINC", "787-2"): 3023599, ("LOINC", "751-8"): 3013650,
    ("LOINC", "731-0"): 3004327, ("LOINC", "2951-2"): 3019550, ("LOINC", "2823-3"): 3023103,
    ("LOINC", "2075-0"): 3014576, ("LOINC", "17861-6"): 3006906, ("LOINC", "2160-0"): 3016723,
    ("LOINC", "3094-0"): 3013682, ("LOINC", "3084-1"): 3037556, ("LOINC", "33914-3"): 46236952,
    ("LOINC", "1742-6"): 3006923, ("LOINC", "1920-8"): 3013721, ("LOINC", "6768-6"): 3035995,
    ("LOINC", "2324-2"): 3026910, ("LOINC", "1975-2"): 3024128, ("LOINC", "1751-7"): 3024561,
    ("LOINC", "2885-2"): 3020630, ("LOINC", "2093-3"): 3027114, ("LOINC", "2571-8"): 3022192,
    ("LOINC", "2085-9"): 3007070, ("LOINC", "13457-7"): 3028288, ("LOINC", "3016-3"): 3009201,
    ("LOINC", "3024-7"): 3008598, ("LOINC", "1988-5"): 3020460, ("LOINC", "30341-2"): 3013707,
    ("LOINC", "5902-2"): 3034426, ("LOINC", "2276-4"): 3001122, ("LOINC", "2857-1"): 3013603,
    ("LOINC", "19123-9"): 3001420,
    ("LOINC", "1558-6"): 3037110,  # not in DQD's file: the Athena id OHDSI cohort reports show for this LOINC name
    ("LOINC", "8867-4"): 3027018, ("LOINC", "8310-5"): 3020891, ("LOINC", "9279-1"): 3024171,
    ("LOINC", "59408-5"): 40762499, ("LOINC", "29463-7"): 3025315, ("LOINC", "8302-2"): 3036277,
    ("LOINC", "39156-5"): 3038553,
    # UCUM units: Athena ids of the units DQD's plausibleUnitConceptIds lists name for those labs (plus pmol/L
    # 8729 and m[IU]/mL 9550); the UCUM code behind each id as OHDSI sites' ETL unit mappings give it (e.g.
    # 8815 10*6/uL, 8734 10*12/L, 9444 10*9/L, 8645 U/L, 8729 pmol/L). {INR} and [pH] keep local ids.
    ("UCUM", "10*9/L"): 9444, ("UCUM", "10*12/L"): 8734, ("UCUM", "10*6/uL"): 8815, ("UCUM", "fL"): 8583,
    ("UCUM", "mL/min/{1.73_m2}"): 720870, ("UCUM", "U/L"): 8645, ("UCUM", "m[IU]/L"): 9040,
    ("UCUM", "pmol/L"): 8729, ("UCUM", "ng/dL"): 8817, ("UCUM", "mg/L"): 8751, ("UCUM", "mm/h"): 8752,
    ("UCUM", "s"): 8555, ("UCUM", "ng/mL"): 8842, ("UCUM", "pg/mL"): 8845, ("UCUM", "ug/L"): 8748,
    ("UCUM", "kg/m2"): 9531, ("UCUM", "m[IU]/mL"): 9550,
}

# Local id bases (OMOP local range starts at 2,000,000,000; the seed uses 2,000,000,029).
BASE = {"condition": 2_001_000_000, "icd10cm": 2_001_100_000, "icd10cn": 2_001_200_000,
        "lab": 2_002_000_000, "vital": 2_002_100_000, "drug": 2_003_000_000, "procedure": 2_004_000_000,
        "vaccine": 2_005_000_000, "unit": 2_006_000_000, "allergy": 2_007_000_000, "note": 2_008_000_000,
        "group": 2_009_000_000}

C = Condition
CONDITIONS: list[Condition] = [
    C("t2dm", "Type 2 diabetes mellitus", "2型糖尿病", "44054006", "E11.9",
      "Type 2 diabetes mellitus without complications", "E11.900x001", "chronic", 0.12,
      labs=("hba1c", "glu_f", "cr", "egfr"), drugs=("metformin", "glargine", "glimepiride", "acarbose", "sitagliptin",
                                                   "dapagliflozin"),
      inpatient=0.03, abnormal=(("hba1c", 7.6, 1.3), ("glu_f", 8.6, 2.2), ("glu", 10.5, 3.0))),
    C("htn", "Essential hypertension", "原发性高血压", "59621000", "I10", "Essential (primary) hypertension",
      "I10.x00x002", "chronic", 0.27, labs=("k", "na", "cr"),
      drugs=("amlodipine", "nifedipine", "lisinopril", "enalapril", "losartan", "valsartan", "hctz", "metoprolol",
             "bisoprolol"), inpatient=0.01),
    C("t1dm", "Type 1 diabetes mellitus", "1型糖尿病", "46635009", "E10.9",
      "Type 1 diabetes mellitus without complications", "E10.900", "chronic", 0.005, labs=("hba1c", "glu_f"),
      drugs=("glargine", "aspart"), inpatient=0.05, abnormal=(("hba1c", 8.0, 1.4), ("glu_f", 9.5, 3.0))),
    C("hld", "Hyperlipidemia", "高脂血症", "55822004", "E78.5", "Hyperlipidemia, unspecified", "E78.500",
      "chronic", 0.2, labs=("chol", "tg", "ldl", "hdl", "alt"), drugs=("atorvastatin", "simvastatin"),
      abnormal=(("chol", 6.2, 0.8), ("ldl", 4.1, 0.7), ("tg", 2.4, 0.8))),
    C("asthma", "Asthma", "支气管哮喘", "195967001", "J45.909", "Unspecified asthma, uncomplicated", "J45.900",
      "chronic", 0.04, drugs=("albuterol", "fluticasone", "montelukast"), inpatient=0.02),
    C("copd", "Chronic obstructive lung disease", "慢性阻塞性肺疾病", "13645005", "J44.9",
      "Chronic obstructive pulmonary disease, unspecified", "J44.900", "chronic", 0.06,
      drugs=("albuterol", "fluticasone"), procs=("cxr",), inpatient=0.08, lethal=0.03),
    C("ckd", "Chronic kidney disease", "慢性肾脏病", "709044004", "N18.9", "Chronic kidney disease, unspecified",
      "N18.900", "chronic", 0.05, labs=("cr", "bun", "egfr", "k", "hgb"), drugs=("furosemide",),
      procs=("dialysis",), inpatient=0.04, lethal=0.02,
      abnormal=(("cr", 210, 60), ("bun", 12.5, 3.0), ("egfr", 38, 12), ("hgb", 108, 12))),
    C("hf", "Heart failure", "心力衰竭", "84114007", "I50.9", "Heart failure, unspecified", "I50.900", "chronic",
      0.02, labs=("bnp", "na", "k", "cr"), drugs=("furosemide", "spironolactone", "metoprolol"),
      procs=("echo", "ecg"), inpatient=0.2, lethal=0.06, abnormal=(("bnp", 2400, 900),)),
    C("af", "Atrial fibrillation", "心房颤动", "49436004", "I48.91", "Unspecified atrial fibrillation",
      "I48.900x001", "chronic", 0.02, labs=("pt", "inr"), drugs=("warfarin", "metoprolol"), procs=("ecg",),
      inpatient=0.05, abnormal=(("inr", 2.5, 0.4), ("pt", 28, 4))),
    C("hypothyroid", "Hypothyroidism", "甲状腺功能减退症", "40930008", "E03.9", "Hypothyroidism, unspecified",
      "E03.900", "chronic", 0.04, labs=("tsh", "ft4"), drugs=("levothyroxine",),
      abnormal=(("tsh", 7.5, 2.5), ("ft4", 10.5, 1.5))),
    C("gerd", "Gastroesophageal reflux disease", "胃食管反流病", "235595009", "K21.9",
      "Gastro-esophageal reflux disease without esophagitis", "K21.900", "chronic", 0.06,
      drugs=("omeprazole", "pantoprazole"), procs=("egd",)),
    C("depression", "Depressive disorder", "抑郁症", "35489007", "F32.9",
      "Major depressive disorder, single episode, unspecified", "F32.900", "chronic", 0.05,
      drugs=("sertraline", "fluoxetine")),
    C("anxiety", "Anxiety disorder", "焦虑障碍", "197480006", "F41.9", "Anxiety disorder, unspecified", "F41.900",
      "chronic", 0.04, drugs=("sertraline",)),
    C("oa", "Osteoarthritis of knee", "膝关节骨关节炎", "239873007", "M17.9", "Osteoarthritis of knee, unspecified",
      "M17.900", "chronic", 0.1, drugs=("diclofenac", "acetaminophen"), procs=("tkr",), inpatient=0.02),
    C("gout", "Gout", "痛风", "90560007", "M10.9", "Gout, unspecified", "M10.900", "chronic", 0.03,
      labs=("ua", "cr"), drugs=("allopurinol", "diclofenac"), abnormal=(("ua", 540, 70),)),
    C("hbv", "Chronic hepatitis B", "慢性乙型病毒性肝炎", "61977001", "B18.1",
      "Chronic viral hepatitis B without delta-agent", "B18.100", "chronic", 0.05,
      labs=("alt", "ast", "tbil", "afp"), drugs=("entecavir",), abnormal=(("alt", 72, 25), ("ast", 58, 18))),
    C("anemia", "Anemia", "贫血", "271737000", "D64.9", "Anemia, unspecified", "D64.900", "chronic", 0.04,
      labs=("hgb", "rbc", "mcv", "ferritin"), drugs=("folic_acid",),
      abnormal=(("hgb", 98, 10), ("rbc", 3.6, 0.4), ("ferritin", 12, 6))),
    C("obesity", "Obesity", "肥胖症", "414916001", "E66.9", "Obesity, unspecified", "E66.900", "chronic", 0.08),
    C("migraine", "Migraine", "偏头痛", "37796009", "G43.909",
      "Migraine, unspecified, not intractable, without status migrainosus", "G43.900", "chronic", 0.05,
      drugs=("ibuprofen",)),
    C("pneumonia", "Pneumonia", "肺炎", "233604007", "J18.9", "Pneumonia, unspecified organism", "J18.900",
      "acute", 0.01, labs=("wbc", "neut", "crp"), drugs=("ceftriaxone", "levofloxacin", "azithromycin"),
      procs=("cxr",), inpatient=0.4, lethal=0.04, abnormal=(("wbc", 14.5, 3.5), ("neut", 11.5, 3.0), ("crp", 85, 40))),
    C("uri", "Acute upper respiratory infection", "急性上呼吸道感染", "54150009", "J06.9",
      "Acute upper respiratory infection, unspecified", "J06.900", "acute", 0.12,
      drugs=("acetaminophen", "ibuprofen", "loratadine")),
    C("bronchitis", "Acute bronchitis", "急性支气管炎", "10509002", "J20.9", "Acute bronchitis, unspecified",
      "J20.900", "acute", 0.04, labs=("wbc",), drugs=("amoxicillin", "azithromycin")),
    C("influenza", "Influenza", "流行性感冒", "6142004", "J11.1",
      "Influenza due to unidentified influenza virus with other respiratory manifestations", "J11.100", "acute",
      0.03, drugs=("oseltamivir", "acetaminophen")),
    C("covid", "COVID-19", "新型冠状病毒感染", "840539006", "U07.1", "COVID-19", "U07.100x001", "acute", 0.05,
      labs=("crp", "lymph"), drugs=("acetaminophen",), inpatient=0.05, lethal=0.05, since="2020-01-20",
      abnormal=(("lymph", 0.8, 0.3), ("crp", 30, 20))),
    C("uti", "Urinary tract infection", "尿路感染", "68566005", "N39.0",
      "Urinary tract infection, site not specified", "N39.000", "acute", 0.03, labs=("wbc", "u_sg", "u_ph"),
      drugs=("ciprofloxacin", "levofloxacin")),
    C("gastroenteritis", "Gastroenteritis", "急性胃肠炎", "25374005", "K52.9",
      "Noninfective gastroenteritis and colitis, unspecified", "K52.900", "acute", 0.03,
      drugs=("ondansetron", "metronidazole")),
    C("appendicitis", "Acute appendicitis", "急性阑尾炎", "85189001", "K35.80",
      "Unspecified acute appendicitis", "K35.800", "acute", 0.001, labs=("wbc", "crp"),
      drugs=("ceftriaxone", "metronidazole"), procs=("appendectomy",), inpatient=1.0,
      abnormal=(("wbc", 15, 3), ("crp", 60, 30))),
    C("ami", "Acute myocardial infarction", "急性心肌梗死", "22298006", "I21.9",
      "Acute myocardial infarction, unspecified", "I21.900", "acute", 0.002, labs=("trop", "ck_mb", "k"),
      drugs=("aspirin", "clopidogrel", "atorvastatin", "nitroglycerin", "enoxaparin"),
      procs=("ecg", "angiography", "pci"), inpatient=1.0, lethal=0.08, abnormal=(("trop", 4.5, 3.0), ("ck_mb", 60, 30))),
    C("stroke", "Cerebral infarction", "脑梗死", "432504007", "I63.9", "Cerebral infarction, unspecified",
      "I63.900", "acute", 0.002, labs=("glu", "chol"), drugs=("aspirin", "clopidogrel", "atorvastatin"),
      procs=("ct_head",), inpatient=1.0, lethal=0.1),
    C("fracture", "Fracture of femur", "股骨骨折", "71620000", "S72.90XA",
      "Unspecified fracture of unspecified femur, initial encounter for closed fracture", "S72.900", "acute",
      0.002, labs=("hgb",), drugs=("tramadol", "enoxaparin"), procs=("xr", "orif"), inpatient=1.0, lethal=0.02),
    C("ankle_sprain", "Sprain of ankle", "踝关节扭伤", "44465007", "S93.409A",
      "Sprain of unspecified ligament of unspecified ankle, initial encounter", "S93.400", "acute", 0.01,
      drugs=("ibuprofen",), procs=("xr",)),
    C("cholelithiasis", "Gallstone", "胆囊结石", "235919008", "K80.20",
      "Calculus of gallbladder without cholecystitis without obstruction", "K80.200", "acute", 0.003,
      labs=("alt", "tbil", "alp"), procs=("cholecystectomy",), inpatient=0.6),
    C("cellulitis", "Cellulitis", "蜂窝织炎", "128045006", "L03.90", "Cellulitis, unspecified", "L03.900", "acute",
      0.005, labs=("wbc",), drugs=("cefazolin", "amoxicillin"), inpatient=0.15),
    C("sinusitis", "Acute sinusitis", "急性鼻窦炎", "15805002", "J01.90", "Acute sinusitis, unspecified",
      "J01.900", "acute", 0.02, drugs=("amoxicillin",)),
    C("otitis", "Otitis media", "中耳炎", "65363002", "H66.90", "Otitis media, unspecified, unspecified ear",
      "H66.900", "acute", 0.01, drugs=("amoxicillin", "penicillin_v")),
    C("lbp", "Low back pain", "腰痛", "279039007", "M54.50", "Low back pain, unspecified", "M54.500", "acute",
      0.03, drugs=("diclofenac", "tramadol")),
    C("pregnancy", "Normal pregnancy", "正常妊娠", "72892002", "Z34.90",
      "Encounter for supervision of normal pregnancy, unspecified, unspecified trimester", "Z34.900", "pregnancy",
      0.03, labs=("hcg", "hgb", "glu"), drugs=("folic_acid",), procs=("delivery", "cesarean"), inpatient=1.0,
      sex="F"),
    C("breast_ca", "Malignant neoplasm of breast", "乳腺恶性肿瘤", "254837009", "C50.919",
      "Malignant neoplasm of unspecified site of unspecified female breast", "C50.900x001", "cancer", 0.012,
      labs=("cea", "wbc"), drugs=("tamoxifen", "letrozole"), procs=("mastectomy", "chemo"), inpatient=0.6,
      lethal=0.03, sex="F"),
    C("lung_ca", "Malignant neoplasm of lung", "肺恶性肿瘤", "93880001", "C34.90",
      "Malignant neoplasm of unspecified part of unspecified bronchus or lung", "C34.900", "cancer", 0.01,
      labs=("cea", "wbc"), drugs=("cisplatin", "ondansetron"), procs=("ct_chest", "chemo"), inpatient=0.7,
      lethal=0.15, abnormal=(("cea", 18, 10),)),
    C("colon_ca", "Malignant neoplasm of colon", "结肠恶性肿瘤", "363406005", "C18.9",
      "Malignant neoplasm of colon, unspecified", "C18.900", "cancer", 0.008, labs=("cea", "hgb"),
      drugs=("capecitabine", "ondansetron"), procs=("colonoscopy", "chemo"), inpatient=0.6, lethal=0.08,
      abnormal=(("cea", 12, 8), ("hgb", 105, 12))),
    C("stomach_ca", "Malignant neoplasm of stomach", "胃恶性肿瘤", "363349007", "C16.9",
      "Malignant neoplasm of stomach, unspecified", "C16.900", "cancer", 0.006, labs=("cea", "hgb"),
      drugs=("capecitabine", "cisplatin"), procs=("egd", "chemo"), inpatient=0.6, lethal=0.1),
    C("liver_ca", "Hepatocellular carcinoma", "肝细胞癌", "25370001", "C22.0", "Liver cell carcinoma", "C22.000",
      "cancer", 0.004, labs=("afp", "alt", "tbil"), drugs=("ondansetron",), procs=("ct_abdomen",),
      inpatient=0.7, lethal=0.2, abnormal=(("afp", 900, 400), ("alt", 80, 30))),
]

L = Lab
LABS: list[Lab] = [
    L("glu_f", "Fasting glucose [Mass/volume] in Serum or Plasma", "1558-6", "GLU-F", "血糖(空腹)", "mmol/L", 3.9, 6.1, 1, "mg/dL", 18.016),
    L("glu", "Glucose [Mass/volume] in Serum or Plasma", "2345-7", "GLU", "葡萄糖", "mmol/L", 3.9, 7.8, 1, "mg/dL", 18.016),
    L("glu_blood", "Glucose [Mass/volume] in Blood", "2339-0", "POCT-GLU", "指尖血糖", "mmol/L", 3.9, 7.8, 1, "mg/dL", 18.016),
    L("hba1c", "Hemoglobin A1c/Hemoglobin.total in Blood", "4548-4", "HBA1C", "糖化血红蛋白", "%", 4.0, 6.0, 1),
    L("wbc", "Leukocytes [#/volume] in Blood by Automated count", "6690-2", "WBC", "白细胞计数", "10*9/L", 3.5, 9.5, 2, "10*3/uL", 1.0),
    L("rbc", "Erythrocytes [#/volume] in Blood by Automated count", "789-8", "RBC", "红细胞计数", "10*12/L", 4.3, 5.8, 2, "10*6/uL", 1.0),
    L("hgb", "Hemoglobin [Mass/volume] in Blood", "718-7", "HGB", "血红蛋白", "g/L", 130, 175, 0, "g/dL", 0.1),
    L("hct", "Hematocrit [Volume Fraction] of Blood by Automated count", "4544-3", "HCT", "红细胞压积", "%", 40, 50, 1),
    L("plt", "Platelets [#/volume] in Blood by Automated count", "777-3", "PLT", "血小板计数", "10*9/L", 125, 350, 0, "10*3/uL", 1.0),
    L("mcv", "MCV [Entitic volume] by Automated count", "787-2", "MCV", "平均红细胞体积", "fL", 82, 100, 1),
    L("neut", "Neutrophils [#/volume] in Blood by Automated count", "751-8", "NEUT#", "中性粒细胞绝对值", "10*9/L", 1.8, 6.3, 2, "10*3/uL", 1.0),
    L("lymph", "Lymphocytes [#/volume] in Blood by Automated count", "731-0", "LYMPH#", "淋巴细胞绝对值", "10*9/L", 1.1, 3.2, 2, "10*3/uL", 1.0),
    L("na", "Sodium [Moles/volume] in Serum or Plasma", "2951-2", "NA", "钠", "mmol/L", 137, 147, 1),
    L("k", "Potassium [Moles/volume] in Serum or Plasma", "2823-3", "K", "钾", "mmol/L", 3.5, 5.3, 2),
    L("cl", "Chloride [Moles/volume] in Serum or Plasma", "2075-0", "CL", "氯", "mmol/L", 99, 110, 1),
    L("ca", "Calcium [Mass/volume] in Serum or Plasma", "17861-6", "CA", "钙", "mmol/L", 2.11, 2.52, 2, "mg/dL", 4.008),
    L("cr", "Creatinine [Mass/volume] in Serum or Plasma", "2160-0", "CREA", "肌酐", "umol/L", 57, 111, 0, "mg/dL", 0.01131),
    L("bun", "Urea nitrogen [Mass/volume] in Serum or Plasma", "3094-0", "BUN", "尿素氮", "mmol/L", 3.1, 8.0, 2, "mg/dL", 2.8),
    L("ua", "Urate [Mass/volume] in Serum or Plasma", "3084-1", "UA", "尿酸", "umol/L", 208, 428, 0, "mg/dL", 0.01681),
    L("egfr", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (MDRD)", "33914-3", "eGFR", "估算肾小球滤过率", "mL/min/{1.73_m2}", 90, 130, 0),
    L("alt", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "1742-6", "ALT", "丙氨酸氨基转移酶", "U/L", 9, 50, 0),
    L("ast", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "1920-8", "AST", "天门冬氨酸氨基转移酶", "U/L", 15, 40, 0),
    L("alp", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "6768-6", "ALP", "碱性磷酸酶", "U/L", 45, 125, 0),
    L("ggt", "Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma", "2324-2", "GGT", "γ-谷氨酰转移酶", "U/L", 10, 60, 0),
    L("tbil", "Bilirubin.total [Mass/volume] in Serum or Plasma", "1975-2", "TBIL", "总胆红素", "umol/L", 3.4, 20.5, 1, "mg/dL", 0.05848),
    L("alb", "Albumin [Mass/volume] in Serum or Plasma", "1751-7", "ALB", "白蛋白", "g/L", 40, 55, 1, "g/dL", 0.1),
    L("tp", "Protein [Mass/volume] in Serum or Plasma", "2885-2", "TP", "总蛋白", "g/L", 65, 85, 1, "g/dL", 0.1),
    L("chol", "Cholesterol [Mass/volume] in Serum or Plasma", "2093-3", "TC", "总胆固醇", "mmol/L", 2.8, 5.2, 2, "mg/dL", 38.67),
    L("tg", "Triglyceride [Mass/volume] in Serum or Plasma", "2571-8", "TG", "甘油三酯", "mmol/L", 0.45, 1.7, 2, "mg/dL", 88.57),
    L("hdl", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "2085-9", "HDL-C", "高密度脂蛋白胆固醇", "mmol/L", 1.0, 1.9, 2, "mg/dL", 38.67),
    L("ldl", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "13457-7", "LDL-C", "低密度脂蛋白胆固醇", "mmol/L", 1.5, 3.4, 2, "mg/dL", 38.67),
    L("tsh", "Thyrotropin [Units/volume] in Serum or Plasma", "3016-3", "TSH", "促甲状腺激素", "m[IU]/L", 0.27, 4.2, 2),
    L("ft4", "Thyroxine (T4) free [Mass/volume] in Serum or Plasma", "3024-7", "FT4", "游离甲状腺素", "pmol/L", 12, 22, 1, "ng/dL", 0.0777),
    L("crp", "C reactive protein [Mass/volume] in Serum or Plasma", "1988-5", "CRP", "C反应蛋白", "mg/L", 0, 10, 1, "mg/dL", 0.1),
    L("esr", "Erythrocyte sedimentation rate by Westergren method", "30341-2", "ESR", "血沉", "mm/h", 0, 20, 0),
    L("pt", "Prothrombin time (PT)", "5902-2", "PT", "凝血酶原时间", "s", 9.4, 12.5, 1),
    L("inr", "INR in Platelet poor plasma by Coagulation assay", "6301-6", "INR", "国际标准化比值", "{INR}", 0.8, 1.2, 2),
    L("aptt", "aPTT in Platelet poor plasma by Coagulation assay", "3173-2", "APTT", "活化部分凝血活酶时间", "s", 25, 35, 1),
    L("trop", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "10839-9", "TNI", "肌钙蛋白I", "ng/mL", 0, 0.04, 3),
    L("bnp", "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma", "33762-6", "NT-proBNP", "N末端B型利钠肽原", "pg/mL", 0, 125, 0),
    L("ferritin", "Ferritin [Mass/volume] in Serum or Plasma", "2276-4", "FER", "铁蛋白", "ug/L", 30, 400, 1, "ng/mL", 1.0),
    L("afp", "Alpha-1-Fetoprotein [Mass/volume] in Serum or Plasma", "1834-1", "AFP", "甲胎蛋白", "ug/L", 0, 7, 2, "ng/mL", 1.0),
    L("cea", "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma", "2039-6", "CEA", "癌胚抗原", "ug/L", 0, 5, 2, "ng/mL", 1.0),
    L("psa", "Prostate specific Ag [Mass/volume] in Serum or Plasma", "2857-1", "PSA", "前列腺特异性抗原", "ug/L", 0, 4, 2, "ng/mL", 1.0),
    L("hcg", "Choriogonadotropin [Units/volume] in Serum or Plasma", "19080-1", "HCG", "人绒毛膜促性腺激素", "m[IU]/mL", 0, 5, 1),
    L("mg", "Magnesium [Mass/volume] in Serum or Plasma", "19123-9", "MG", "镁", "mmol/L", 0.75, 1.02, 2, "mg/dL", 2.431),
    L("u_sg", "Specific gravity of Urine by Test strip", "5811-5", "SG", "尿比重", "", 1.003, 1.030, 3),
    L("u_ph", "pH of Urine by Test strip", "5803-2", "PH", "尿酸碱度", "[pH]", 4.5, 8.0, 1),
    L("ck_mb", "Creatine kinase.MB [Enzymatic activity/volume] in Serum or Plasma", "13969-1", "CK-MB", "肌酸激酶同工酶", "U/L", 0, 24, 0),
]

V = Vital
VITALS: list[Vital] = [
    V("sbp", "Systolic blood pressure", "8480-6", "收缩压", "mm[Hg]", 122, 12, 0),
    V("dbp", "Diastolic blood pressure", "8462-4", "舒张压", "mm[Hg]", 78, 8, 0),
    V("hr", "Heart rate", "8867-4", "心率", "/min", 76, 10, 0),
    V("temp", "Body temperature", "8310-5", "体温", "Cel", 36.6, 0.3, 1),
    V("rr", "Respiratory rate", "9279-1", "呼吸频率", "/min", 16, 2, 0),
    V("spo2", "Oxygen saturation in Arterial blood by Pulse oximetry", "59408-5", "血氧饱和度", "%", 97.5, 1.2, 0),
    V("weight", "Body weight", "29463-7", "体重", "kg", 64, 11, 1),
    V("height", "Body height", "8302-2", "身高", "cm", 166, 8, 0),
    V("bmi", "Body mass index (BMI) [Ratio]", "39156-5", "体重指数", "kg/m2", 23, 3.5, 1),
]

D = Drug
DRUGS: list[Drug] = [
    D("metformin", "metformin", "二甲双胍片", "6809", "0.5g", "tablet", "PO", 2),
    D("glargine", "insulin glargine", "甘精胰岛素注射液", "274783", "300IU/3ml", "injection", "SC", 1),
    D("aspart", "insulin aspart", "门冬胰岛素注射液", "86009", "300IU/3ml", "injection", "SC", 3),
    D("glimepiride", "glimepiride", "格列美脲片", "25789", "2mg", "tablet", "PO", 1),
    D("acarbose", "acarbose", "阿卡波糖片", "16681", "50mg", "tablet", "PO", 3),
    D("sitagliptin", "sitagliptin", "西格列汀片", "593411", "100mg", "tablet", "PO", 1),
    D("dapagliflozin", "dapagliflozin", "达格列净片", "1488564", "10mg", "tablet", "PO", 1),
    D("amlodipine", "amlodipine", "苯磺酸氨氯地平片", "17767", "5mg", "tablet", "PO", 1),
    D("nifedipine", "nifedipine", "硝苯地平控释片", "7417", "30mg", "tablet", "PO", 1),
    D("lisinopril", "lisinopril", "赖诺普利片", "29046", "10mg", "tablet", "PO", 1),
    D("enalapril", "enalapril", "马来酸依那普利片", "3827", "10mg", "tablet", "PO", 2),
    D("losartan", "losartan", "氯沙坦钾片", "52175", "50mg", "tablet", "PO", 1),
    D("valsartan", "valsartan", "缬沙坦胶囊", "69749", "80mg", "capsule", "PO", 1),
    D("hctz", "hydrochlorothiazide", "氢氯噻嗪片", "5487", "25mg", "tablet", "PO", 1),
    D("metoprolol", "metoprolol", "酒石酸美托洛尔片", "6918", "25mg", "tablet", "PO", 2),
    D("bisoprolol", "bisoprolol", "富马酸比索洛尔片", "19484", "5mg", "tablet", "PO", 1),
    D("atorvastatin", "atorvastatin", "阿托伐他汀钙片", "83367", "20mg", "tablet", "PO", 1),
    D("simvastatin", "simvastatin", "辛伐他汀片", "36567", "20mg", "tablet", "PO", 1),
    D("aspirin", "aspirin", "阿司匹林肠溶片", "1191", "100mg", "tablet", "PO", 1),
    D("clopidogrel", "clopidogrel", "硫酸氢氯吡格雷片", "32968", "75mg", "tablet", "PO", 1),
    D("warfarin", "warfarin", "华法林钠片", "11289", "2.5mg", "tablet", "PO", 1),
    D("acetaminophen", "acetaminophen 325 MG Oral Tablet", "对乙酰氨基酚片", "313782", "325mg", "tablet", "PO", 3,
      "Clinical Drug"),
    D("ibuprofen", "ibuprofen", "布洛芬缓释胶囊", "5640", "0.3g", "capsule", "PO", 2),
    D("amoxicillin", "amoxicillin", "阿莫西林胶囊", "723", "0.25g", "capsule", "PO", 3),
    D("azithromycin", "azithromycin", "阿奇霉素片", "18631", "0.25g", "tablet", "PO", 1),
    D("ceftriaxone", "ceftriaxone", "注射用头孢曲松钠", "2193", "1g", "injection", "IV", 1),
    D("levofloxacin", "levofloxacin", "左氧氟沙星片", "82122", "0.5g", "tablet", "PO", 1),
    D("omeprazole", "omeprazole", "奥美拉唑肠溶胶囊", "7646", "20mg", "capsule", "PO", 1),
    D("pantoprazole", "pantoprazole", "泮托拉唑钠肠溶片", "40790", "40mg", "tablet", "PO", 1),
    D("albuterol", "albuterol", "硫酸沙丁胺醇吸入气雾剂", "435", "100ug*200揿", "inhaler", "INH", 2),
    D("fluticasone", "fluticasone", "丙酸氟替卡松吸入气雾剂", "41126", "125ug*60揿", "inhaler", "INH", 2),
    D("montelukast", "montelukast", "孟鲁司特钠片", "88249", "10mg", "tablet", "PO", 1),
    D("prednisone", "prednisone", "醋酸泼尼松片", "8640", "5mg", "tablet", "PO", 2),
    D("levothyroxine", "levothyroxine", "左甲状腺素钠片", "10582", "50ug", "tablet", "PO", 1),
    D("sertraline", "sertraline", "盐酸舍曲林片", "36437", "50mg", "tablet", "PO", 1),
    D("fluoxetine", "fluoxetine", "盐酸氟西汀胶囊", "4493", "20mg", "capsule", "PO", 1),
    D("allopurinol", "allopurinol", "别嘌醇片", "519", "0.1g", "tablet", "PO", 2),
    D("furosemide", "furosemide", "呋塞米片", "4603", "20mg", "tablet", "PO", 1),
    D("spironolactone", "spironolactone", "螺内酯片", "9997", "20mg", "tablet", "PO", 1),
    D("oseltamivir", "oseltamivir", "磷酸奥司他韦胶囊", "260101", "75mg", "capsule", "PO", 2),
    D("tamoxifen", "tamoxifen", "枸橼酸他莫昔芬片", "10324", "10mg", "tablet", "PO", 2),
    D("letrozole", "letrozole", "来曲唑片", "72143", "2.5mg", "tablet", "PO", 1),
    D("capecitabine", "capecitabine", "卡培他滨片", "194000", "0.5g", "tablet", "PO", 4),
    D("cisplatin", "cisplatin", "注射用顺铂", "2555", "20mg", "injection", "IV", 1),
    D("entecavir", "entecavir", "恩替卡韦分散片", "306266", "0.5mg", "tablet", "PO", 1),
    D("ondansetron", "ondansetron", "盐酸昂丹司琼片", "26225", "8mg", "tablet", "PO", 2),
    D("folic_acid", "folic acid", "叶酸片", "4511", "0.4mg", "tablet", "PO", 1),
    D("tramadol", "tramadol", "盐酸曲马多缓释片", "10689", "0.1g", "tablet", "PO", 2),
    D("diclofenac", "diclofenac", "双氯芬酸钠缓释片", "3355", "75mg", "tablet", "PO", 1),
    D("nitroglycerin", "nitroglycerin", "硝酸甘油片", "4917", "0.5mg", "tablet", "SL", 1),
    D("enoxaparin", "enoxaparin", "依诺肝素钠注射液", "67108", "4000AXaIU/0.4ml", "injection", "SC", 1),
    D("metronidazole", "metronidazole", "甲硝唑片", "6922", "0.2g", "tablet", "PO", 3),
    D("ciprofloxacin", "ciprofloxacin", "盐酸环丙沙星片", "2551", "0.25g", "tablet", "PO", 2),
    D("loratadine", "loratadine", "氯雷他定片", "28889", "10mg", "tablet", "PO", 1),
    D("cefazolin", "cefazolin 2000 MG Injection", "注射用头孢唑林钠", "1665060", "2g", "injection", "IV", 2,
      "Clinical Drug"),
    D("penicillin_v", "penicillin V", "青霉素V钾片", "7984", "0.25g", "tablet", "PO", 4),
]

P = Procedure
PROCEDURES: list[Procedure] = [
    P("ecg", "Electrocardiographic procedure", "心电图检查", "29303009"),
    P("echo", "Echocardiography", "超声心动图", "40701008"),
    P("cxr", "Plain chest X-ray", "胸部X线检查", "399208008"),
    P("xr", "Plain X-ray of femur", "股骨X线检查", "168584005"),
    P("ct_head", "Computed tomography of head", "头颅CT", "303653007"),
    P("ct_chest", "Computed tomography of chest", "胸部CT", "169069000"),
    P("ct_abdomen", "Computed tomography of abdomen", "腹部CT", "169070004"),
    P("angiography", "Coronary angiography", "冠状动脉造影", "33367005"),
    P("pci", "Percutaneous coronary intervention", "经皮冠状动脉介入治疗", "415070008"),
    P("appendectomy", "Appendectomy", "阑尾切除术", "80146002"),
    P("cholecystectomy", "Laparoscopic cholecystectomy", "腹腔镜胆囊切除术", "45595009"),
    P("orif", "Open reduction and internal fixation of fracture of femur", "股骨骨折切开复位内固定术", "179046008"),
    P("tkr", "Total knee replacement", "全膝关节置换术", "609588000"),
    P("delivery", "Delivery procedure", "阴道分娩", "236973005"),
    P("cesarean", "Cesarean section", "剖宫产术", "11466000"),
    P("mastectomy", "Mastectomy", "乳房切除术", "69031006"),
    P("chemo", "Chemotherapy", "化学治疗", "367336001"),
    P("colonoscopy", "Colonoscopy", "结肠镜检查", "73761001"),
    P("egd", "Esophagogastroduodenoscopy", "胃镜检查", "386831001"),
    P("dialysis", "Hemodialysis", "血液透析", "302497006"),
]

VACCINES: list[Vaccine] = [
    Vaccine("flu", "Influenza, seasonal, injectable, preservative free", "流感疫苗", "140"),
    Vaccine("covid", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose",
            "新冠疫苗", "208"),
    Vaccine("hepb", "Hep B, adult", "乙肝疫苗(成人)", "43"),
    Vaccine("tdap", "Tdap", "百白破疫苗", "115"),
    Vaccine("ppsv23", "pneumococcal polysaccharide vaccine, 23 valent", "23价肺炎球菌多糖疫苗", "33"),
    Vaccine("hpv", "HPV, quadrivalent", "四价HPV疫苗", "62"),
]

# AllergyIntolerance substances: (key, en, zh, SNOMED code)
ALLERGIES = [
    ("peanut", "Peanut", "花生", "762952008"),
    ("dander", "Animal dander", "动物皮屑", "264287008"),
    ("penicillin", "Allergy to penicillin", "青霉素过敏", "91936005"),
    ("shellfish", "Allergy to shellfish", "海鲜过敏", "300913006"),
]

# Note types (LOINC document ontology): (key, en, zh, LOINC code)
NOTE_TYPES = [
    ("hp", "History and physical note", "入院记录", "34117-2"),
    ("plan", "Evaluation + Plan note", "门诊病历", "51847-2"),
    ("discharge", "Discharge summary", "出院小结", "18842-5"),
]

U = Unit
UNITS: list[Unit] = [
    U("mmol/L", "millimole per liter", ("mmol/L", "mmol/l", "mmol/L")),
    U("mg/dL", "milligram per deciliter", ("mg/dL", "mg/dl", "mg/dL")),
    U("%", "percent", ("%", "％", "%")),
    U("10*9/L", "billion per liter", ("10^9/L", "×10⁹/L", "10E9/L")),
    U("10*3/uL", "thousand per microliter", ("K/uL", "10^3/uL", "x10E3/uL")),
    U("10*12/L", "trillion per liter", ("10^12/L", "×10¹²/L", "10E12/L")),
    U("10*6/uL", "million per microliter", ("M/uL", "10^6/uL", "x10E6/uL")),
    U("g/L", "gram per liter", ("g/L", "g/l", "g/L")),
    U("g/dL", "gram per deciliter", ("g/dL", "g/dl", "g/dL")),
    U("fL", "femtoliter", ("fL", "fl", "fL")),
    U("umol/L", "micromole per liter", ("umol/L", "μmol/L", "µmol/l")),
    U("mL/min/{1.73_m2}", "milliliter per minute per 1.73 square meter",
      ("mL/min/1.73m2", "ml/min/1.73m²", "mL/min/1.73 m2")),
    U("U/L", "unit per liter", ("U/L", "u/l", "IU/L")),
    U("m[IU]/L", "milli-international unit per liter", ("mIU/L", "mIU/l", "uIU/mL")),
    U("pmol/L", "picomole per liter", ("pmol/L", "pmol/l", "pmol/L")),
    U("ng/dL", "nanogram per deciliter", ("ng/dL", "ng/dl", "ng/dL")),
    U("mg/L", "milligram per liter", ("mg/L", "mg/l", "mg/L")),
    U("mm/h", "millimeter per hour", ("mm/h", "mm/hr", "mm/1h")),
    U("s", "second", ("s", "sec", "秒")),
    U("{INR}", "international normalized ratio", ("INR", "ratio", "")),
    U("ng/mL", "nanogram per milliliter", ("ng/mL", "ng/ml", "ng/mL")),
    U("pg/mL", "picogram per milliliter", ("pg/mL", "pg/ml", "pg/mL")),
    U("ug/L", "microgram per liter", ("ug/L", "μg/L", "ng/ml")),
    U("m[IU]/mL", "milli-international unit per milliliter", ("mIU/mL", "mIU/ml", "IU/L")),
    U("[pH]", "pH", ("pH", "", "")),
    U("mm[Hg]", "millimeter mercury column", ("mmHg", "mmHg", "mm[Hg]")),
    U("/min", "per minute", ("/min", "次/分", "bpm")),
    U("Cel", "degree Celsius", ("C", "℃", "Cel")),
    U("kg", "kilogram", ("kg", "kg", "kg")),
    U("cm", "centimeter", ("cm", "cm", "cm")),
    U("kg/m2", "kilogram per square meter", ("kg/m2", "kg/m²", "kg/m2")),
]

# Grouping concepts used as ancestors: (key, en, SNOMED code, members)
GROUPS = [
    ("diabetes", "Diabetes mellitus", "73211009", ("t2dm", "t1dm")),
    ("cancer", "Malignant neoplastic disease", "363346000", ("breast_ca", "lung_ca", "colon_ca", "stomach_ca", "liver_ca")),
    ("ihd", "Ischemic heart disease", "414545008", ("ami",)),
]

CONDITION = {c.key: c for c in CONDITIONS}
LAB = {x.key: x for x in LABS}
VITAL = {x.key: x for x in VITALS}
DRUG = {x.key: x for x in DRUGS}
PROCEDURE = {x.key: x for x in PROCEDURES}
VACCINE = {x.key: x for x in VACCINES}
UNIT = {u.ucum: u for u in UNITS}


def _ids() -> dict:
    """concept id of every catalog entry: {(kind, key): concept_id} (deterministic, from the bases above)."""
    ids = {}

    def put(kind, key, vocab, code, base, i):
        ids[(kind, key)] = KNOWN_IDS.get((vocab, code), BASE[base] + i)

    for i, c in enumerate(CONDITIONS):
        put("condition", c.key, "SNOMED", c.snomed, "condition", i)
        put("icd10cm", c.key, "ICD10CM", c.icd10cm, "icd10cm", i)
        put("icd10cn", c.key, "ICD10CN", c.icd10cn, "icd10cn", i)
    for i, x in enumerate(LABS):
        put("lab", x.key, "LOINC", x.loinc, "lab", i)
    for i, x in enumerate(VITALS):
        put("vital", x.key, "LOINC", x.loinc, "vital", i)
    for i, x in enumerate(DRUGS):
        put("drug", x.key, "RxNorm", x.rxnorm, "drug", i)
    for i, x in enumerate(PROCEDURES):
        put("procedure", x.key, "SNOMED", x.snomed, "procedure", i)
    for i, x in enumerate(VACCINES):
        put("vaccine", x.key, "CVX", x.cvx, "vaccine", i)
    for i, x in enumerate(UNITS):
        put("unit", x.ucum, "UCUM", x.ucum, "unit", i)
    for i, x in enumerate(ALLERGIES):
        put("allergy", x[0], "SNOMED", x[3], "allergy", i)
    for i, x in enumerate(NOTE_TYPES):
        put("note", x[0], "LOINC", x[3], "note", i)
    for i, x in enumerate(GROUPS):
        put("group", x[0], "SNOMED", x[2], "group", i)
    return ids


IDS = _ids()


def concept_id(kind: str, key: str) -> int:
    """The standard concept id of a catalog entry, e.g. concept_id("lab", "hba1c"); 0 for no unit."""
    if kind == "unit" and not key:
        return 0
    return IDS[(kind, key)]


def demo_vocabulary() -> dict:
    """The catalog as Athena-style rows for tools/build_demo_vocab.py."""
    concepts, rels, anc, syn = [], [], [], []
    cid = IDS

    def std(kind, key, name, domain, vocab, cls, code):
        concepts.append((cid[(kind, key)], name, domain, vocab, cls, "S", code))

    for c in CONDITIONS:
        s = cid[("condition", c.key)]
        std("condition", c.key, c.en, "Condition" if c.kind != "pregnancy" else "Condition", "SNOMED", "Clinical Finding"
            if c.kind == "pregnancy" else "Disorder", c.snomed)
        for kind, vocab, code, name, cls in (("icd10cm", "ICD10CM", c.icd10cm, c.icd10cm_name, "ICD10 code"),
                                             ("icd10cn", "ICD10CN", c.icd10cn, c.zh, "ICD10 code")):
            src = cid[(kind, c.key)]
            concepts.append((src, name, "Condition", vocab, cls, "", code))
            rels.append((src, s, "Maps to"))
        syn.append((s, c.zh, CHINESE))
        syn.append((s, c.en, ENGLISH))
    for g, name, code, members in GROUPS:
        a = cid[("group", g)]
        concepts.append((a, name, "Condition", "SNOMED", "Disorder", "S", code))
        for m in members:
            d = cid[("condition", m)]
            rels.append((d, a, "Is a"))
            rels.append((a, d, "Subsumes"))
            anc.append((a, d, 1, 1))
    for x in LABS:
        std("lab", x.key, x.en, "Measurement", "LOINC", "Lab Test", x.loinc)
        syn.append((cid[("lab", x.key)], x.zh, CHINESE))
    for x in VITALS:
        std("vital", x.key, x.en, "Measurement", "LOINC", "Clinical Observation", x.loinc)
        syn.append((cid[("vital", x.key)], x.zh, CHINESE))
    for x in DRUGS:
        std("drug", x.key, x.en, "Drug", "RxNorm", x.concept_class, x.rxnorm)
        syn.append((cid[("drug", x.key)], x.zh, CHINESE))
    for x in PROCEDURES:
        std("procedure", x.key, x.en, "Procedure", "SNOMED", "Procedure", x.snomed)
        syn.append((cid[("procedure", x.key)], x.zh, CHINESE))
    for x in VACCINES:
        std("vaccine", x.key, x.en, "Drug", "CVX", "CVX", x.cvx)
        syn.append((cid[("vaccine", x.key)], x.zh, CHINESE))
    for x in UNITS:
        std("unit", x.ucum, x.name, "Unit", "UCUM", "Unit", x.ucum)
    for key, en, zh, code in ALLERGIES:
        std("allergy", key, en, "Observation", "SNOMED", "Substance" if key in ("peanut", "dander") else
            "Clinical Finding", code)
        syn.append((cid[("allergy", key)], zh, CHINESE))
    for key, en, zh, code in NOTE_TYPES:
        std("note", key, en, "Note", "LOINC", "Clinical Observation", code)
        syn.append((cid[("note", key)], zh, CHINESE))
    return {"concepts": concepts, "relationships": rels, "ancestors": anc, "synonyms": syn}
