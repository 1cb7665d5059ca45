"""Each hospital's systems and their dialects: HIS ADT and LIS ORU as HL7 v2 (written here, byte by byte),
EMR as FHIR R4 (transaction bundles or Bulk Data NDJSON), pharmacy as CSV. Defects are injected here, where
their exact location is known, and recorded with the facts in the ground truth."""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import random
import re

import orjson

from medlake.simulate import catalog as cat
from medlake.simulate.care import Encounter
from medlake.simulate.people import full_name, typo
from medlake.simulate.sinks import Record, Sink, Truth

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10CN = "https://medlake.org/fhir/sid/icd-10-cn"      # illustrative URI for ICD-10 Chinese clinical codes
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RESIDENT_ID = "urn:oid:2.16.156.10011.1.1"              # national resident ID number namespace
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
CONFIRMED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]}
DIAGNOSIS = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                          "code": "encounter-diagnosis"}]}]
VITAL_SIGNS = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs"}]}]
VITAL_CODE = {v.key: {"coding": [{"system": LOINC, "code": v.loinc, "display": v.en}]} for v in cat.VITALS}
BP_PANEL = {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}]}
# a vital sign no body has: a digit too many (a decimal point lost: 97.5 % -> 975 %) gives a value above these limits,
# whatever the true value (times ten until it is); body temperature has its own (a 500 °C or 3.7 °C thermometer)
IMPOSSIBLE_ABOVE = {"hr": 300, "rr": 90, "spo2": 100, "weight": 450, "height": 260, "bmi": 150}
BUNDLE_RECORDS = 20  # patient records per transaction Bundle
VISIT_CONCEPT = {"OP": 9202, "ER": 9203, "IP": 9201}
FHIR_CLASS = {"OP": "AMB", "ER": "EMER", "IP": "IMP"}
FHIR_CLASS_CODING = {k: {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": v}
                     for k, v in FHIR_CLASS.items()}
EXPIRED = {"dischargeDisposition": {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "exp"}]}}
FIVE_MINUTES, TWO_HOURS = dt.timedelta(minutes=5), dt.timedelta(hours=2)
HL7_CLASS = {"OP": "O", "ER": "E", "IP": "I"}
ADT_STRUCTURE = {"A01": "ADT_A01", "A02": "ADT_A02", "A04": "ADT_A01", "A08": "ADT_A01", "A03": "ADT_A03",
                 "A11": "ADT_A09", "A12": "ADT_A12", "A13": "ADT_A01", "A40": "ADT_A39"}
FHIR_TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
              "AllergyIntolerance", "Immunization", "DocumentReference", "Location")
# the hospital a unit (Location) is in, per profile: its city and country
SITE = ({"city": "上海市", "country": "CN"}, {"city": "广州市", "country": "CN"},
        {"city": "Boston", "state": "MA", "country": "US"})
# Unmapped local codes: traditional Chinese medicine items, hospital-specific tests (truly no standard concept).
UNMAPPED_DRUGS = [("ZY0301", "黄芪颗粒"), ("ZY0517", "连花清瘟胶囊"), ("ZY0722", "复方丹参滴丸"), ("ZY0903", "小柴胡颗粒")]
UNMAPPED_LABS = [("XLB-01", "全血黏度(低切)", "mPa.s", 6.0), ("ZDY-07", "自定义检验套餐指数", "", 1.2),
                 ("XLB-02", "红细胞聚集指数", "", 2.1)]
UNMAPPED_DX = [("BNV090", "气虚证"), ("BNP070", "肝郁气滞证"), ("BNX010", "湿热证")]
NOTE_NEG_EN = ["Denies chest pain.", "No fever.", "No evidence of pneumonia.", "Denies shortness of breath."]
NOTE_NEG_ZH = ["否认胸痛。", "无发热。", "胸片未见异常。", "否认呼吸困难。"]


NOTE_TYPE = {n[0]: n for n in cat.NOTE_TYPES}
NOTE_CODE = {n[0]: {"coding": [{"system": LOINC, "code": n[3], "display": n[1]}]} for n in cat.NOTE_TYPES}
NOTE_CONCEPT = {n[0]: cat.concept_id("note", n[0]) for n in cat.NOTE_TYPES}
NOT_PREGNANCY = [c for c in cat.CONDITIONS if c.kind != "pregnancy"]
# the end of a note_mentions.jsonl row: (condition key, Chinese note) -> concept id and text; assertion
NOTE_MENTION = {(c.key, zh): orjson.dumps({"concept_id": cat.concept_id("condition", c.key),
                                           "text": c.zh if zh else c.en.lower()})[14:-1]
                for c in cat.CONDITIONS for zh in (True, False)}
ASSERTION = {a: b',"assertion":"%s"}\n' % a.encode() for a in ("present", "negated", "possible", "family")}


_SPECIAL = re.compile(r"[|^~\\&]")
LAB_INDEX = {x.key: i for i, x in enumerate(cat.LABS)}
DRUG_INDEX = {x.key: i for i, x in enumerate(cat.DRUGS)}
PROC_INDEX = {x.key: i for i, x in enumerate(cat.PROCEDURES)}


def escape(s: str) -> str:
    """HL7 v2 escaping of the field, component, repetition, escape and subcomponent characters."""
    if not _SPECIAL.search(s):
        return s
    return (s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\")
            .replace("&", "\\T\\"))


def fhir_time(d: dt.datetime) -> str:
    return d.isoformat(timespec="seconds") + "+08:00"


def version(res: dict, n: int, when: str, **fields) -> dict:
    """Version `n` of a FHIR resource, last updated `when` (the EMR's corrections), with `fields` changed."""
    return dict(res, **fields, meta={"versionId": str(n), "lastUpdated": when})


class Registration:
    """One patient record (MRN) of a person at one hospital, with the demographics as registered there."""
    __slots__ = ("mrn", "patient_id", "demo", "defects", "systems", "primary", "resources", "facts",
                 "res_defects", "deceased", "pid", "after", "dead_in_error")

    def __init__(self, mrn, patient_id, demo, primary):
        self.mrn, self.patient_id, self.demo, self.primary = mrn, patient_id, demo, primary
        self.defects = []          # registration defects, placed on the first HIS message of this record
        self.systems = set()
        self.resources = []        # FHIR resources for this record: (resource dict, facts, defects)
        self.after = []            # the EMR's corrections of them, for the next sync batch (same tuples)
        self.dead_in_error = None  # a death the EMR records in error and takes back (a time)
        self.facts = []
        self.res_defects = []
        self.deceased = None
        self.pid = None            # the PID segment, once built


class Hospital:
    def __init__(self, index: int, out, truth: Truth, rate: float, seed: int, end: dt.date):
        self.future_year = end.year + 25
        self.index = index
        self.id = f"h{index + 1}"
        self.H = self.id.upper()
        self.profile = index % 3
        self.fhir_mode = "bundle" if index % 2 == 0 else "bulk"
        self.version = ("2.5.1", "2.3", "2.8")[self.profile]
        self.batch = self.profile != 0
        self.encoding = "gbk" if self.profile == 1 else "utf-8"
        self.truth, self.out, self.rate = truth, out, rate
        self.rng = random.Random(seed * 7919 + index)  # file-level decisions
        self.res_count = 0
        self._ts: dict = {}
        self.labs: dict = {}   # lab key -> local dialect (lab_local)
        self.dx: dict = {}     # condition key -> local coding (dx_local)
        self.batch, self.batch_records = ([], [], []), 0   # the transaction Bundle being filled
        self.counters = {k: itertools.count(1) for k in ("mrn", "msg", "visit", "rx", "order", "bundle", "error")}
        self.later: list = []  # (resource, facts, defects) for the next sync batch (the EMR's corrections)
        self.sent: dict[str, list[str]] = {}  # visit number -> its ADT messages' ids (taken by the stay's truth row)
        self._res = itertools.count(1)  # FHIR resource ids (all types)
        self.visit_sys = f"urn:medlake:{self.id}:visit"
        self.vital_info = self._vital_info()
        self.med_info: dict = {}
        self.units = {"OP": "门诊", "ER": "急诊", "IP": "病房", "ICU": "重症监护室", "CCU": "心脏监护室"} \
            if self.profile != 2 else {"OP": "OPD", "ER": "ED", "IP": "WARD", "ICU": "ICU", "CCU": "CCU"}
        self.located: set = set()  # the units an Encounter.location names (a bulk EMR exports them as Locations)
        self.pv1_head = {c: self._pv1_head(c, self.units[c]) for c in HL7_CLASS}
        self.proc_info: dict = {}
        self.note_codes: set = set()
        self.rx_info: dict = {}
        self.lis_sys = f"{self.H}LIS"
        self.drug_sys = f"urn:medlake:{self.id}:pharmacy"
        self.proc_sys = f"urn:medlake:{self.id}:procedure"
        self.dx_sys = (ICD10CN, ICD10CM, SNOMED)[self.profile]
        self.tcm_sys = f"urn:medlake:{self.id}:tcm-diagnosis"
        h = self.id
        hl7_header = self._batch_header if self.batch else b""
        hl7_footer = self._batch_footer if self.batch else None
        cut = (self.rng, rate * 2)
        self.his = Sink(truth, out, f"{h}/his", h, "his", "ADT_{:06d}.hl7", 400, hl7_header, hl7_footer, b"\r",
                        cut)
        self.lis = Sink(truth, out, f"{h}/lis", h, "lis", "ORU_{:06d}.hl7", 400, hl7_header, hl7_footer, b"\r",
                        cut)
        self.columns = self._csv_columns()
        header = (self.delimiter.join(self.columns.values()) + "\n").encode(self.encoding)
        if self.profile == 2:
            header = b"\xef\xbb\xbf" + header  # a UTF-8 BOM, as some Windows exports write
        self.pharmacy = Sink(truth, out, f"{h}/pharmacy", h, "pharmacy", "dispense_{:05d}.csv", 3000, header,
                             truncate=cut)
        if self.fhir_mode == "bundle":
            self.bundles = Sink(truth, out, f"{h}/emr/bundles", h, "emr", "bundle_{:07d}.json", 1,
                                newline_counts=None, truncate=(self.rng, rate))
        else:
            self.bulk = {t: Sink(truth, out, f"{h}/emr/bulk", h, "emr", f"{t}.ndjson", 10 ** 15) for t in FHIR_TYPES}
        self.sinks = [self.his, self.lis, self.pharmacy]
        self.sinks += [self.bundles] if self.fhir_mode == "bundle" else list(self.bulk.values())

    # ---------- configuration ----------
    def _csv_columns(self) -> dict:
        if self.profile == 0:
            self.delimiter, self.date_format = ",", "%Y-%m-%d %H:%M:%S"
            names = ["rx_no", "mrn", "visit_no", "drug_code", "drug_name", "qty", "qty_unit", "days", "route",
                     "dispense_time"]
        elif self.profile == 1:
            self.delimiter, self.date_format = ",", "%Y/%m/%d %H:%M"
            names = ["发药单号", "病人ID", "就诊号", "药品编码", "药品名称", "数量", "单位", "天数", "给药途径", "发药时间"]
        else:
            self.delimiter, self.date_format = ";", "%d/%m/%Y %H:%M"
            names = ["DispenseID", "PatientNo", "EncounterNo", "ItemCode", "ItemDesc", "Qty", "UOM", "DaysSupply",
                     "Route", "DispensedOn"]
        fields = ["record_id", "patient_id", "visit_id", "drug_code", "drug_name", "quantity", "quantity_unit",
                  "days_supply", "route", "dispensed_at"]
        return dict(zip(fields, names))

    def source_config(self) -> str:
        h = self.id
        lines = []
        for system, kind in (("his", "hl7v2"), ("lis", "hl7v2"), ("emr", "fhir"), ("pharmacy", "csv")):
            lines += ["[[source]]", f'name = "{h}-{system}"', f'kind = "{kind}"', f'hospital = "{h}"',
                      f'system = "{system}"', f'path = "{h}/{system}"']
            if system == "pharmacy":
                lines += [f'encoding = "{self.encoding}"' if self.profile != 2 else 'encoding = "utf-8-sig"',
                          f'delimiter = "{self.delimiter}"', "[source.columns]"]
                lines += [f'{k} = "{v}"' for k, v in self.columns.items()]
                lines += ["[source.formats]", f'dispensed_at = "{self.date_format}"', "[source.code_systems]",
                          f'drug_code = "{self.drug_code_system()}"']
            lines.append("")
        return "\n".join(lines)

    def future(self, d: dt.datetime) -> dt.datetime:
        """The same day and time 25 years after the simulated period: a date that has not happened yet."""
        return d.replace(year=self.future_year, day=min(d.day, 28) if d.month == 2 else d.day)

    def drug_code(self, key: str) -> str:
        """The drug's code in this hospital (pharmacy and EMR share the drug dictionary)."""
        i = DRUG_INDEX[key]
        return (f"Y{100000 + i * 7}", f"XY{86000 + i * 13:06d}", cat.DRUG[key].rxnorm)[self.profile]

    def drug_code_system(self) -> str:
        return RXNORM if self.profile == 2 else self.drug_sys

    def _batch_header(self, sink: Sink) -> bytes:
        now = self.ts(dt.datetime(2026, 1, 1))
        name = sink.rel.rsplit("/", 1)[-1]
        app = "HIS" if sink.system == "his" else "LIS"
        return (f"FHS|^~\\&|{app}|{self.H}|MEDLAKE|DC|{now}||{name}\r"
                f"BHS|^~\\&|{app}|{self.H}|MEDLAKE|DC|{now}\r").encode()

    def _batch_footer(self, sink: Sink) -> bytes:
        return f"BTS|{sink.count}\rFTS|1\r".encode()

    # ---------- identifiers and formats ----------
    def next(self, what: str) -> int:
        return next(self.counters[what])

    def ts(self, d: dt.datetime) -> str:
        s = self._ts.get(d)
        if s is None:
            if len(self._ts) > 5000:
                self._ts.clear()
            s = self._ts[d] = self._ts_format(d)
        return s

    def _ts_format(self, d: dt.datetime) -> str:
        if self.profile == 1:
            return f"{d.year:04d}{d.month:02d}{d.day:02d}{d.hour:02d}{d.minute:02d}"
        s = f"{d.year:04d}{d.month:02d}{d.day:02d}{d.hour:02d}{d.minute:02d}{d.second:02d}"
        return s + "+0800" if self.profile == 2 else s

    def registration(self, person: dict, primary: bool, rng: random.Random) -> Registration:
        p = self.rate
        zh = person["locale"] == "zh_CN"
        demo = {"family": person["family"], "given": person["given"], "birth": person["birth_date"],
                "id_number": person.get("id_number"), "sex": person["sex"], "phone": person["phone"],
                "address": person["address"], "insurance": person["insurance"], "pinyin": False,
                "person": person["person"]}
        n = self.next("mrn")
        mrn = (f"{10000000 + n}", f"ZY{n:07d}", f"P-{n:06d}")[self.profile]
        reg = Registration(mrn, f"{self.id}-pat-{n:07d}", demo, primary)
        dup = not primary
        name_field = "PID-5"
        if rng.random() < (0.35 if dup else p):
            which = "given" if rng.random() < 0.7 else "family"
            old = demo[which]
            demo[which] = typo(old, rng)
            reg.defects.append(("name_typo", name_field, f"{which} name '{demo[which]}' (true '{old}')"))
        if zh and rng.random() < (0.25 if dup else p) and not reg.defects:
            demo["family"], demo["given"], demo["pinyin"] = person["family_pinyin"], person["given_pinyin"], True
            reg.defects.append(("pinyin_name", name_field, f"name in pinyin '{demo['family']} {demo['given']}' "
                                                           f"(true '{full_name(person)}')"))
        b = demo["birth"]
        if b.day <= 12 and b.day != b.month and rng.random() < (0.15 if dup else p):
            demo["birth"] = dt.date(b.year, b.day, b.month)
            reg.defects.append(("dob_day_month_swap", "PID-7", f"birth date {demo['birth']} (true {b})"))
        if zh and demo["id_number"] and rng.random() < (0.35 if dup else p):
            demo["id_number"] = None
            reg.defects.append(("missing_id_number", "PID-19" if self.profile == 1 else "PID-3",
                                "resident ID number not recorded"))
        return reg

    # ---------- HL7 v2 ----------
    def msh(self, app: str, event: str, structure: str, when: dt.datetime, mid: str) -> str:
        mtype = f"{event}" if self.profile == 1 else f"{event}^{structure}"
        tail = "" if self.profile == 1 else "|||AL|NE||UNICODE UTF-8"
        return f"MSH|^~\\&|{app}|{self.H}|MEDLAKE|DC|{self.ts(when)}||{mtype}|{mid}|P|{self.version}{tail}"

    def pid(self, reg: Registration, death: dt.datetime | None = None, alive: bool = False) -> str:
        """PID of a registration; with `death` its PID-29/30, `alive`: PID-29 the explicit null `""` and PID-30 `N`
        (a death recorded in error taken back)."""
        if death is None and not alive:
            if reg.pid is None:
                reg.pid = self._pid(reg, None)
            return reg.pid
        return self._pid(reg, death, alive)

    def _pid(self, reg: Registration, death: dt.datetime | None, alive: bool = False) -> str:
        d = reg.demo
        mrn = escape(reg.mrn)
        zh_name = not d["pinyin"] and d["family"] and not d["family"].isascii()
        if self.profile == 1:
            name = escape(d["family"] + d["given"]) if zh_name else f"{escape(d['family'])}^{escape(d['given'])}"
        else:
            name = f"{escape(d['family'])}^{escape(d['given'])}" + ("^^^^^L" if self.profile == 2 else "")
        sex = {"M": "1", "F": "2"}[d["sex"]] if self.profile == 1 else d["sex"]
        a = d["address"]
        addr = "^".join(escape(x) for x in (a["line"], "", a["city"], a["district"], a["postal"], a["country"]))
        phone = f"^PRN^CP^^^^^^^^^{d['phone']}" if self.profile == 2 else d["phone"]
        ids = f"{mrn}^^^{self.H}^MR"
        f = [""] * 31
        f[1] = "1"
        if self.profile == 1:
            f[2] = mrn
            f[3] = f"{mrn}^^^{self.H}"
            f[19] = d["id_number"] or ""
        else:
            reps = [ids]
            if d["id_number"]:
                reps.append(f"{d['id_number']}^^^CHN^NNCHN")
            reps.append(f"{d['insurance']}^^^{self.H}INS^HC")
            f[3] = "~".join(reps)
        f[5] = name
        f[7] = f"{d['birth'].year:04d}{d['birth'].month:02d}{d['birth'].day:02d}"
        f[8] = sex
        f[11] = addr
        f[13] = phone
        if death:
            f[29], f[30] = self.ts(death), "Y"
        elif alive:
            f[29], f[30] = '""', "N"
        while f and f[-1] == "":
            f.pop()
        return "PID|" + "|".join(f[1:])

    def _pv1_head(self, cls: str, unit: str) -> str:
        return f"PV1|1|{HL7_CLASS[cls]}|{unit}^^^{self.H}" + "|" * 16

    def pv1(self, enc: Encounter, visit: str, discharge: bool, unit: str | None = None) -> str:
        """PV1 with PV1-2 class, PV1-3 location (the class's unit, else `unit`: a key of `units`), PV1-19 visit
        number, PV1-44 admit time, and on discharge PV1-36 disposition and PV1-45 discharge time."""
        head = self._pv1_head(enc.cls, self.units[unit]) if unit else self.pv1_head[enc.cls]
        vn = visit if self.profile == 1 else f"{visit}^^^{self.H}^VN"
        if discharge:
            return (f"{head}{vn}|||||||||||||||||{'20' if enc.died else '01'}||||||||"
                    f"{self.ts(enc.start)}|{self.ts(enc.end)}")
        return f"{head}{vn}|||||||||||||||||||||||||{self.ts(enc.start)}"

    def hl7_record(self, segs: list[str], mid: str, facts, defects, rng: random.Random, sink: Sink,
                   allow_malformed: bool = True) -> None:
        """Serialize, maybe break (malformed_hl7, missing_mandatory), add, maybe duplicate."""
        p = self.rate
        r = rng.random()
        if allow_malformed and r < p / 4 and len(segs) > 2:
            # a stray segment break inside a field of PID: the tail becomes a line that is no segment
            j = next(i for i, s in enumerate(segs) if s.startswith("PID"))
            s = segs[j]
            cut = s.index("|", s.index("|", 4) + 1) + 3  # a few characters into PID-3
            segs = segs[:j] + [s[:cut], "\u00a0" + s[cut:]] + segs[j + 1:]
            defects = defects + [("malformed_hl7", j + 1, "PID", "segment broken by a stray segment terminator; "
                                  "the next line is not a segment", None)]
        elif allow_malformed and r < p / 2:
            j = next(i for i, s in enumerate(segs) if s.startswith("PID"))
            f = segs[j].split("|")
            f[3] = ""
            if self.profile == 1:
                f[2] = ""
            segs = segs[:j] + ["|".join(f)] + segs[j + 1:]
            defects = defects + [("missing_mandatory", j, "PID-3", "no patient identifier", None)]
        data = ("\r".join(segs) + "\r").encode()
        rec = Record(data, mid, facts, defects, len(segs))
        sink.add(rec)
        if not rec.quarantined and rng.random() < p / 2:
            sink.add(Record(data, mid, [], [("duplicate_message", 0, None, "same message sent again", None)],
                            len(segs)))

    def adt(self, event: str, reg: Registration, enc: Encounter, visit: str, when: dt.datetime,
            rng: random.Random, facts=(), defects=(), death=None, merge: str | None = None,
            correction: bool = False, alive: bool = False, unit: str | None = None) -> str:
        """An ADT message. `correction`: a clerk's message that a later one takes back or that takes an earlier one
        back (never broken, carries no registration defect); `alive`: PID-29 `""`, PID-30 `N`."""
        mid = f"{self.H}A{self.next('msg'):09d}"
        structure = ADT_STRUCTURE[event]
        segs = [self.msh("HIS", f"ADT^{event}", structure, when, mid), f"EVN|{event}|{self.ts(when)}",
                self.pid(reg, death, alive)]
        defects = list(defects)
        if reg.defects and event in ("A01", "A04") and not correction:
            defects += [(cls, 2, field, detail, None) for cls, field, detail in reg.defects]
            reg.defects = []
        if merge:
            segs.append(f"MRG|{merge}^^^{self.H}^MR" if self.profile != 1 else f"MRG|{merge}")
        else:
            self.sent.setdefault(visit, []).append(mid)
            segs.append(self.pv1(enc, visit, event == "A03" or when > enc.end, unit))  # after the stay: its discharge
        reg.systems.add("his")
        self.hl7_record(segs, mid, list(facts), defects, rng, self.his, allow_malformed=not defects and not correction)
        return mid

    def oru(self, reg: Registration, enc: Encounter, visit: str, rng: random.Random) -> None:
        p = self.rate
        mid = f"{self.H}L{self.next('msg'):09d}"
        order = f"{self.H}O{self.next('order'):08d}"
        collected = enc.start + dt.timedelta(minutes=20 + rng.randrange(60))
        reported = collected + dt.timedelta(minutes=60 + rng.randrange(240))
        segs = [self.msh("LIS", "ORU^R01", "ORU_R01", reported, mid), self.pid(reg),
                f"PV1|1|{HL7_CLASS[enc.cls]}" + "|" * 17 + (visit if self.profile == 1 else f"{visit}^^^{self.H}^VN"),
                f"ORC|RE|{order}", f"OBR|1|{order}|{order}F|LAB^{'检验' if self.profile < 2 else 'Laboratory'}^"
                f"{self.lis_sys}|||{self.ts(collected)}|||||||{self.ts(collected)}"]
        facts, defects = [], []
        extra = rng.choice(UNMAPPED_LABS) if rng.random() < p else None
        person = reg.demo["person"]
        date = collected.date().isoformat()
        obs0 = self.ts(collected)
        labs = self.labs
        for i, (key, si) in enumerate(enc.labs, 1):
            line = len(segs)
            obs = obs0
            code, prefix, unit_ucum, factor, digits, unit_text, ref, lo, hi, concept, unit_concept, esc_unit = \
                labs.get(key) or self.lab_local(key)
            value = round(si * factor, digits)
            flag = "H" if value > hi else "L" if value < lo else "N"
            r = rng.random()
            if r < p / 2 and unit_text:
                lab = cat.LAB[key]
                if r < p / 4 and lab.conv_factor != 1.0:
                    # the other unit system's label on this value, which is not converted: the value is wrong for
                    # the unit written. (Units that differ by a factor of 1, such as 10*9/L and 10*3/uL or ug/L
                    # and ng/mL, are never swapped: such a relabel would be no defect.)
                    other, factor_to = (lab.conv_unit, lab.conv_factor) if unit_ucum == lab.unit else \
                        (lab.unit, 1 / lab.conv_factor)
                    sent_unit = cat.UNIT[other].local_styles[self.profile]
                    self.truth.code(self.id, "lis", f"{self.lis_sys}-UNIT", sent_unit, sent_unit, "unit", "UCUM",
                                    other, cat.concept_id("unit", other))
                    defects.append(("wrong_unit", line, "OBX-6",
                                    f"value {value:.{digits}f} is in {unit_ucum} but labelled '{sent_unit}' "
                                    f"({other}); in {other} it would be {value * factor_to:.4g}", None))
                    esc_unit = escape(sent_unit)
                else:
                    esc_unit = ""
                    defects.append(("missing_unit", line, "OBX-6", f"unit {unit_ucum} not sent", None))
            if rng.random() < p / 8:
                obs = self.ts(self.future(collected))
                defects.append(("future_date", line, "OBX-14", f"observation time in {(self.future(collected)).year} "
                                f"(true {date})", None))
            segs.append(f"OBX|{i}{prefix}{value:.{digits}f}|{esc_unit}|{ref}|{flag}|||F|||{obs}")
            facts.append({"person": person, "kind": "measurement", "date": date,
                          "concept_id": concept, "value_as_number": value, "unit_concept_id": unit_concept})
        if extra:
            code, name, unit_text, mean = extra
            value = f"{max(0.1, rng.gauss(mean, mean / 8)):.2f}"
            self.truth.code(self.id, "lis", self.lis_sys, code, name, "lab", None, None, 0)
            defects.append(("unmapped_code", len(segs), "OBX-3", f"local lab code {code} has no standard concept",
                            None))
            segs.append(f"OBX|{len(enc.labs) + 1}|NM|{code}^{name}^{self.lis_sys}||{value}|{unit_text}||||F|||{obs0}")
            facts.append({"person": person, "kind": "measurement", "date": date, "concept_id": 0,
                          "value_as_number": float(value), "unit_concept_id": None})
        reg.systems.add("lis")
        self.hl7_record(segs, mid, facts, defects, rng, self.lis, allow_malformed=not defects)

    def lab_local(self, key: str) -> tuple:
        """This LIS's local code, name, unit and reference range of a lab test (registered in codes.jsonl)."""
        lab = cat.LAB[key]
        li = LAB_INDEX[key]
        code, name = ((f"{1000 + li}", lab.abbr), (lab.abbr, lab.zh), (f"L{li:04d}", lab.en.split(" [")[0]))[self.profile]
        unit_ucum, factor = lab.unit, 1.0
        if self.profile == 2 and lab.conv_unit:
            unit_ucum, factor = lab.conv_unit, lab.conv_factor
        digits = lab.digits if factor == 1.0 else max(lab.digits, 1 if factor > 1 else 2)
        lo, hi = round(lab.lo * factor, digits), round(lab.hi * factor, digits)
        unit_text = cat.UNIT[unit_ucum].local_styles[self.profile] if unit_ucum else ""
        self.truth.code(self.id, "lis", self.lis_sys, code, name, "lab", "LOINC", lab.loinc, cat.concept_id("lab", key))
        if unit_text:
            self.truth.code(self.id, "lis", f"{self.lis_sys}-UNIT", unit_text, unit_text, "unit", "UCUM", unit_ucum,
                            cat.concept_id("unit", unit_ucum))
        local = self.labs[key] = (code, f"|NM|{code}^{escape(name)}^{self.lis_sys}||", unit_ucum, factor, digits,
                                  unit_text, f"{lo:.{digits}f}-{hi:.{digits}f}", lo, hi, cat.concept_id("lab", key),
                                  cat.concept_id("unit", unit_ucum) if unit_text else None, escape(unit_text))
        return local

    # ---------- pharmacy CSV ----------
    def dispense(self, reg: Registration, enc: Encounter, visit: str, drug_key: str | None, days: int,
                 rng: random.Random, when: dt.datetime) -> None:
        p = self.rate
        n = self.next("rx")
        rid = (f"RX{n:09d}", f"FY{n:010d}", f"{n}")[self.profile]
        defects = []
        day = when.date().isoformat()
        if drug_key:
            drug, unit, route, tablets, daily, concept = self.rx_info.get(drug_key) or self._rx_info(drug_key)
            qty = daily * days if tablets else max(1, days // 10) * daily
        else:
            code, name = rng.choice(UNMAPPED_DRUGS)
            qty, unit, route = 6 * days // 3, ("bag", "袋", "BAG")[self.profile], ("PO", "口服", "oral")[self.profile]
            code_sys = self.drug_code_system()
            self.truth.code(self.id, "pharmacy", code_sys, code, name, "drug", None, None, 0)
            drug, concept = self.csv_fields(code, name), 0
            defects.append(("unmapped_code", 0, self.columns["drug_code"],
                            f"local drug code {code} has no standard concept", None))
        facts = [{"person": reg.demo["person"], "kind": "drug", "date": day, "concept_id": concept,
                  "value_as_number": None, "unit_concept_id": None}]
        stamp = self.csv_time(when)
        mrn = reg.mrn
        r = rng.random()
        if r < p / 4:
            mrn = ""
            defects.append(("missing_mandatory", 0, self.columns["patient_id"], "no patient identifier", None))
        elif r < p / 2 and not defects:
            stamp = self.csv_time(self.future(when))
            defects.append(("future_date", 0, self.columns["dispensed_at"],
                            f"dispensed in {(self.future(when)).year} (true {when.date()})", None))
        sep = self.delimiter
        # record id, MRN, visit number, quantities and times never hold the delimiter or a quote
        text = f"{rid}{sep}{mrn}{sep}{visit}{sep}{drug}{sep}{qty}{sep}{unit}{sep}{days}{sep}{route}{sep}{stamp}\n"
        data = text.encode(self.encoding)
        if self.encoding == "utf-8" and not defects and rng.random() < p / 2 and not text.isascii():
            wrong = text.encode("gbk", errors="replace")
            try:
                wrong.decode("utf-8")
            except UnicodeDecodeError:
                data = wrong
                defects.append(("wrong_encoding", 0, None, "row written in GBK in a UTF-8 file", None))
        reg.systems.add("pharmacy")
        rec = Record(data, rid, facts, defects)
        self.pharmacy.add(rec)
        if not rec.quarantined and rng.random() < p / 2:
            self.pharmacy.add(Record(data, rid, [], [("duplicate_message", 0, None, "same row exported twice",
                                                      None)]))

    def csv_fields(self, *values: str) -> str:
        """Values joined by the delimiter, quoted where they hold the delimiter or a quote."""
        sep = self.delimiter
        return sep.join(f'"{v}"' if sep in v or '"' in v else v for v in values)

    def csv_time(self, d: dt.datetime) -> str:
        """`d` in this pharmacy's date format (self.date_format), without strftime."""
        if self.profile == 0:
            return f"{d.year:04d}-{d.month:02d}-{d.day:02d} {d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        if self.profile == 1:
            return f"{d.year:04d}/{d.month:02d}/{d.day:02d} {d.hour:02d}:{d.minute:02d}"
        return f"{d.day:02d}/{d.month:02d}/{d.year:04d} {d.hour:02d}:{d.minute:02d}"

    def _rx_info(self, key: str) -> tuple:
        """This pharmacy's code and name columns, unit, route, whether counted in units, units a day, concept."""
        d = cat.DRUG[key]
        code = self.drug_code(key)
        name = (f"{d.zh}({d.strength})", f"{d.zh} {d.strength}", f"{d.en} {d.strength}")[self.profile]
        concept = cat.concept_id("drug", key)
        self.truth.code(self.id, "pharmacy", self.drug_code_system(), code, name, "drug", "RxNorm", d.rxnorm, concept)
        unit = {"tablet": ("tab", "片", "TAB"), "capsule": ("cap", "粒", "CAP"), "injection": ("vial", "支", "VIAL"),
                "inhaler": ("inh", "瓶", "INH")}[d.form][self.profile]
        route = {"PO": ("PO", "口服", "oral"), "IV": ("IV", "静脉滴注", "intravenous"),
                 "SC": ("SC", "皮下注射", "subcutaneous"), "INH": ("INH", "吸入", "inhalation"),
                 "SL": ("SL", "舌下含服", "sublingual"), "IM": ("IM", "肌肉注射", "intramuscular")}[d.route][self.profile]
        info = self.rx_info[key] = (self.csv_fields(code, name), self.csv_fields(unit), self.csv_fields(route),
                                    d.form in ("tablet", "capsule"), d.daily, concept)
        return info

    # ---------- FHIR ----------
    def res_id(self, kind: str) -> str:
        return f"{self.id}-{kind}-{next(self._res)}"

    def fhir_encounter(self, reg: Registration, enc: Encounter, visit: str, rng: random.Random, person: dict,
                       stretches=None):
        """The EMR's Encounter of a visit and its events. A bulk-exporting EMR also gives an inpatient stay's or
        emergency visit's units (`stretches`: unit key, from, to) as its `location` entries, with their periods."""
        p = self.rate
        hid = self.id
        res = self._res
        pref = {"reference": f"Patient/{reg.patient_id}"}
        eid = f"{hid}-enc-{next(res)}"
        eref = {"reference": f"Encounter/{eid}"}
        start = enc.start
        e = {"resourceType": "Encounter", "id": eid, "status": "finished", "class": FHIR_CLASS_CODING[enc.cls],
             "identifier": [{"system": self.visit_sys, "value": visit}],
             "subject": pref, "period": {"start": fhir_time(start), "end": fhir_time(enc.end)}}
        if enc.died:
            e["hospitalization"] = EXPIRED
        if stretches and self.fhir_mode == "bulk":
            self.located.update(u for u, _, _ in stretches)
            e["location"] = [{"location": {"reference": f"Location/{self.id}-loc-{u.lower()}",
                                           "display": self.units[u]},
                              "status": "completed", "period": {"start": fhir_time(a), "end": fhir_time(b)}}
                             for u, a, b in stretches]
        add = reg.resources.append
        add((e, [], []))
        day = start.date().isoformat()
        who = person["person"]
        dx = self.dx
        for k in enc.dx:
            cid = f"{hid}-cond-{next(res)}"
            system, code, display, concept = dx.get(k) or self.dx_local(k)
            add(({"resourceType": "Condition", "id": cid,
                  "clinicalStatus": ACTIVE, "verificationStatus": CONFIRMED, "category": DIAGNOSIS,
                  "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
                  "subject": pref, "encounter": eref, "recordedDate": day},
                 [{"person": who, "kind": "condition", "date": day, "concept_id": concept, "value_as_number": None,
                   "unit_concept_id": None, "_mid": cid}], []))
        if rng.random() < p and self.profile < 2:
            code, display = rng.choice(UNMAPPED_DX)
            cid = f"{hid}-cond-{next(res)}"
            self.truth.code(hid, "emr", self.tcm_sys, code, display, "diagnosis", None, None, 0)
            add(({"resourceType": "Condition", "id": cid,
                  "clinicalStatus": ACTIVE, "verificationStatus": CONFIRMED, "category": DIAGNOSIS,
                  "code": {"coding": [{"system": self.tcm_sys, "code": code, "display": display}], "text": display},
                  "subject": pref, "encounter": eref, "recordedDate": day},
                 [{"person": who, "kind": "condition", "date": day, "concept_id": 0, "value_as_number": None,
                   "unit_concept_id": None, "_mid": cid}],
                 [("unmapped_code", None, "Condition.code", f"local diagnosis code {code} has no standard concept",
                   cid)]))
        when = fhir_time(start + FIVE_MINUTES)
        vinfo = self.vital_info
        vitals = enc.vitals
        # blood pressure travels as one panel with two components, as EHRs send it (care puts sbp, dbp first)
        if vitals and vitals[0][0] == "sbp":
            oid = f"{hid}-obs-{next(res)}"
            comps, facts = [], []
            for key, value in vitals[:2]:
                code_cc, unit_text, ucum, concept, unit_concept = vinfo[key]
                comps.append({"code": code_cc, "valueQuantity": {"value": value, "unit": unit_text,
                                                                  "system": UCUM, "code": ucum}})
                facts.append({"person": who, "kind": "measurement", "date": day, "concept_id": concept,
                              "value_as_number": value, "unit_concept_id": unit_concept, "_mid": oid})
            add(({"resourceType": "Observation", "id": oid, "status": "final", "category": VITAL_SIGNS,
                  "code": BP_PANEL, "subject": pref, "encounter": eref, "effectiveDateTime": when, "component": comps},
                 facts, []))
            vitals = vitals[2:]
        bulk = self.fhir_mode == "bulk"
        for key, value in vitals:
            code_cc, unit_text, ucum, concept, unit_concept = vinfo[key]
            oid = f"{hid}-obs-{next(res)}"
            qty = {"value": value, "unit": unit_text or ucum, "system": UCUM, "code": ucum}
            o = {"resourceType": "Observation", "id": oid, "status": "final",
                 "category": VITAL_SIGNS, "code": code_cc,
                 "subject": pref, "encounter": eref, "effectiveDateTime": when, "valueQuantity": qty}
            defects = []
            r = rng.random()
            if key == "temp" and r < p / 2:
                qty["value"] = 500.0 if r < p / 4 else 3.7
                defects.append(("impossible_value", None, "Observation.valueQuantity.value",
                                f"body temperature {qty['value']} Cel (true {value})", oid))
            elif r < p / 8:
                del qty["unit"], qty["code"], qty["system"]
                defects.append(("missing_unit", None, "Observation.valueQuantity.unit", f"unit {ucum} not sent", oid))
            elif r < p / 6 and bulk:
                del o["code"]
                defects.append(("missing_mandatory", None, "Observation.code", "Observation without code", oid))
            elif r < p / 5:
                o["effectiveDateTime"] = fhir_time(self.future(start))
                defects.append(("future_date", None, "Observation.effectiveDateTime",
                                f"effective in {(self.future(start)).year} (true {day})", oid))
            elif key in IMPOSSIBLE_ABOVE and r < p / 5 + p / 10:
                bad = value * 10
                while bad <= IMPOSSIBLE_ABOVE[key]:
                    bad *= 10
                qty["value"] = round(bad, 1)
                defects.append(("impossible_value", None, "Observation.valueQuantity.value",
                                f"{key} {qty['value']} {ucum} (true {value})", oid))
            add((o, [{"person": who, "kind": "measurement", "date": day, "concept_id": concept,
                      "value_as_number": value, "unit_concept_id": unit_concept, "_mid": oid}], defects))
        meds = self.med_info
        for key, days in enc.meds:
            coding, text, dosage, concept = meds.get(key) or self._med_info(key)
            mid = f"{hid}-medrq-{next(res)}"
            add(({"resourceType": "MedicationRequest", "id": mid, "status": "completed", "intent": "order",
                  "medicationCodeableConcept": {"coding": coding, "text": text},
                  "subject": pref, "encounter": eref, "authoredOn": when, "dosageInstruction": dosage,
                  "dispenseRequest": {"expectedSupplyDuration": {"value": days, "unit": "days", "system": UCUM,
                                                                 "code": "d"}}},
                 [{"person": who, "kind": "drug", "date": day, "concept_id": concept,
                   "value_as_number": None, "unit_concept_id": None, "_mid": mid}], []))
        if enc.procs:
            done = start + TWO_HOURS
            done_time, done_day = fhir_time(done), done.date().isoformat()
            for key in enc.procs:
                code, concept = self.proc_info.get(key) or self._proc_info(key)
                pid = f"{hid}-proc-{next(res)}"
                add(({"resourceType": "Procedure", "id": pid, "status": "completed", "code": code,
                      "subject": pref, "encounter": eref, "performedDateTime": done_time},
                     [{"person": who, "kind": "procedure", "date": done_day, "concept_id": concept,
                       "value_as_number": None, "unit_concept_id": None, "_mid": pid}], []))
        for key in enc.vaccines:
            v = cat.VACCINE[key]
            iid = f"{hid}-imm-{next(res)}"
            self.truth.code(hid, "emr", CVX, v.cvx, v.en, "vaccine", "CVX", v.cvx, cat.concept_id("vaccine", key))
            add(({"resourceType": "Immunization", "id": iid, "status": "completed",
                  "vaccineCode": {"coding": [{"system": CVX, "code": v.cvx, "display": v.en}]},
                  "patient": pref, "encounter": eref, "occurrenceDateTime": when},
                 [{"person": who, "kind": "drug", "date": day, "concept_id": cat.concept_id("vaccine", key),
                   "value_as_number": None, "unit_concept_id": None, "_mid": iid}], []))
        if enc.note:
            self.note(reg, enc, eref, pref, rng, person)

    def encounter_in_error(self, reg: Registration, enc: Encounter) -> tuple[str, str]:
        """An Encounter the EMR opened in error, for a visit number that never was, ten minutes before the visit's
        own, and took back: a sync batch sends it in progress and the next one entered-in-error (version 2); a bulk
        export has only its current state. Returns (visit number, resource id)."""
        visit, eid = f"{self.H}V{self.next('visit'):08d}", f"{self.id}-enc-error-{self.next('error')}"
        start = enc.start - dt.timedelta(minutes=10)
        e = {"resourceType": "Encounter", "id": eid, "meta": None, "status": None,  # (set per version)
             "class": FHIR_CLASS_CODING[enc.cls],
             "identifier": [{"system": self.visit_sys, "value": visit}],
             "subject": {"reference": f"Patient/{reg.patient_id}"}, "period": {"start": fhir_time(start)}}
        if self.fhir_mode == "bundle":
            reg.resources.append((version(e, 1, fhir_time(start), status="in-progress"), [], []))
        reg.after.append((version(e, 2, fhir_time(start + dt.timedelta(minutes=30)), status="entered-in-error"),
                          [], []))
        return visit, eid

    @staticmethod
    def amended(reg: Registration, i: int) -> None:
        """A result (`reg.resources[i]`, an Observation) the EMR sent with a slipped decimal, ten times its value, and
        amended: version 1 in this sync batch, version 2 (`amended`, the true value, an hour later by
        `meta.lastUpdated`) in the next; the result's facts go with version 2."""
        res, facts, defects = reg.resources[i]
        when = res["effectiveDateTime"]
        reg.resources[i] = (version(res, 1, when, valueQuantity=dict(
            res["valueQuantity"], value=round(res["valueQuantity"]["value"] * 10, 2))), [], defects)
        later = (dt.datetime.fromisoformat(when) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
        reg.after.append((version(res, 2, later, status="amended"), facts, []))

    def _vital_info(self) -> dict:
        """Per vital sign: (LOINC code, unit as this EMR writes it, UCUM unit, concept id, unit concept id)."""
        return {v.key: (VITAL_CODE[v.key], cat.UNIT[v.unit].local_styles[self.profile], v.unit,
                        cat.concept_id("vital", v.key), cat.concept_id("unit", v.unit)) for v in cat.VITALS}

    def _med_info(self, key: str) -> tuple:
        """This EMR's MedicationRequest coding of a drug (registered in codes.jsonl when first used)."""
        d = cat.DRUG[key]
        coding = [{"system": self.drug_code_system(), "code": self.drug_code(key),
                   "display": d.en if self.profile == 2 else d.zh}]
        concept = cat.concept_id("drug", key)
        self.truth.code(self.id, "emr", coding[0]["system"], coding[0]["code"], coding[0]["display"], "drug",
                        "RxNorm", d.rxnorm, concept)
        info = self.med_info[key] = (coding, d.zh if self.profile < 2 else d.en,
                                     [{"text": f"{d.strength} {d.route} x{d.daily}/d"}], concept)
        return info

    def _proc_info(self, key: str) -> tuple:
        """This EMR's Procedure code (local codes in profile 1, SNOMED CT otherwise) and its concept id."""
        pr = cat.PROCEDURE[key]
        concept = cat.concept_id("procedure", key)
        if self.profile == 1:
            coding = {"system": self.proc_sys, "code": f"SS{PROC_INDEX[key] + 101:04d}", "display": pr.zh}
        else:
            coding = {"system": SNOMED, "code": pr.snomed, "display": pr.en}
        self.truth.code(self.id, "emr", coding["system"], coding["code"], coding["display"], "procedure", "SNOMED",
                        pr.snomed, concept)
        info = self.proc_info[key] = ({"coding": [coding]}, concept)
        return info

    def dx_local(self, k: str) -> tuple:
        """This EMR's coding of a condition: ICD-10 Chinese clinical codes, ICD-10-CM or SNOMED CT."""
        c = cat.CONDITION[k]
        system, code, display, vocab = ((ICD10CN, c.icd10cn, c.zh, "ICD10CN"), (ICD10CM, c.icd10cm, c.icd10cm_name, "ICD10CM"),
                                        (SNOMED, c.snomed, c.en, "SNOMED"))[self.profile]
        concept = cat.concept_id("condition", k)
        self.truth.code(self.id, "emr", system, code, display, "diagnosis", vocab, code, concept)
        self.dx[k] = (system, code, display, concept)
        return self.dx[k]

    def note(self, reg, enc, eref, pref, rng, person):
        key, en, zh, loinc = NOTE_TYPE[enc.note]
        nid = f"{self.id}-doc-{next(self._res)}"
        zh_note = self.profile < 2
        dx = [cat.CONDITION[k] for k in enc.dx]
        others = [c for c in NOT_PREGNANCY if c.key not in enc.dx]
        neg, maybe, fam = rng.sample(others, 3)
        who = full_name(person)  # as clinicians write notes: the patient by name (the CDM must not take it)
        if zh_note:
            parts = [f"{zh}。", f"患者{who}因{'、'.join(c.zh for c in dx) or '体检'}就诊。", rng.choice(NOTE_NEG_ZH),
                     f"否认{neg.zh}病史。", f"考虑{maybe.zh}可能，待排。", f"家族史：母亲患{fam.zh}。",
                     rng.choice(NOTE_NEG_ZH)]
        else:
            parts = [f"{en}.", f"Patient {who} seen for {', '.join(c.en.lower() for c in dx) or 'a check-up'}.",
                     rng.choice(NOTE_NEG_EN), f"Denies history of {neg.en.lower()}.",
                     f"Possible {maybe.en.lower()}, to be ruled out.", f"Family history: mother with {fam.en.lower()}.",
                     rng.choice(NOTE_NEG_EN)]
        text = " ".join(parts)
        row = self.truth.files["note_mentions"].write
        head = b'{"hospital":"%s","note_id":"%s","person":"%s","concept_id":' % (
            self.id.encode(), nid.encode(), person["person"].encode())
        for c, assertion in [(c, "present") for c in dx] + [(neg, "negated"), (maybe, "possible"), (fam, "family")]:
            row(head + NOTE_MENTION[c.key, zh_note] + ASSERTION[assertion])
        if loinc not in self.note_codes:
            self.note_codes.add(loinc)
            self.truth.code(self.id, "emr", LOINC, loinc, en, "note", "LOINC", loinc, cat.concept_id("note", key))
        when = fhir_time(enc.end)
        reg.resources.append(({"resourceType": "DocumentReference", "id": nid, "status": "current",
                               "type": NOTE_CODE[key], "subject": pref, "date": when,
                               "context": {"encounter": [eref]},
                               "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                                           "language": "zh-CN" if zh_note else "en",
                                                           "data": base64.b64encode(text.encode()).decode()}}]},
                              [{"person": person["person"], "kind": "note", "date": enc.end.date().isoformat(),
                                "concept_id": NOTE_CONCEPT[key], "value_as_number": None,
                                "unit_concept_id": None, "_mid": nid}], []))

    def patient_resource(self, reg: Registration, person: dict, rng: random.Random):
        d = reg.demo
        ids = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": f"urn:medlake:{self.id}:mrn", "value": reg.mrn}]
        if d["id_number"]:
            ids.append({"system": RESIDENT_ID, "value": d["id_number"]})
        zh = not d["pinyin"] and not d["family"].isascii()
        name = {"family": d["family"], "given": [d["given"]],
                "text": d["family"] + d["given"] if zh else f"{d['given']} {d['family']}"}
        a = d["address"]
        res = {"resourceType": "Patient", "id": reg.patient_id, "identifier": ids, "name": [name],
               "gender": "male" if d["sex"] == "M" else "female", "telecom": [{"system": "phone", "value": d["phone"]}],
               "birthDate": d["birth"].isoformat(),
               "address": [{"line": [a["line"]], "city": a["city"], "district": a["district"],
                            "postalCode": a["postal"], "country": a["country"]}]}
        facts, defects = [], []
        if reg.deceased:
            res["deceasedDateTime"] = fhir_time(reg.deceased)
            if person.get("death_source") == (self.id, reg.patient_id):
                facts.append({"person": person["person"], "kind": "death", "date": reg.deceased.date().isoformat(),
                              "concept_id": 0, "value_as_number": None, "unit_concept_id": None,
                              "_mid": reg.patient_id})
            if rng.random() < self.rate * 5:
                wrong = dt.datetime.combine(d["birth"] - dt.timedelta(days=rng.randrange(30, 3000)), dt.time(12))
                res["deceasedDateTime"] = fhir_time(wrong)
                defects.append(("death_before_birth", None, "Patient.deceasedDateTime",
                                f"death {wrong.date()} before birth {d['birth']} (true death {reg.deceased.date()})",
                                reg.patient_id))
        return res, facts, defects

    def flush_emr(self, reg: Registration, person: dict, rng: random.Random) -> None:
        """Write one patient record's EMR resources: one transaction Bundle, or lines in the NDJSON files."""
        p = self.rate
        items = [self.patient_resource(reg, person, rng)] + reg.resources
        if reg.dead_in_error:  # version 1 deceased, version 2 (the next sync batch) not
            res, t = items[0][0], reg.dead_in_error
            items[0] = (version(res, 1, fhir_time(t), deceasedDateTime=fhir_time(t)), *items[0][1:])
            reg.after.append((version(res, 2, fhir_time(t + dt.timedelta(hours=2)), deceasedBoolean=False), [], []))
        for key in person.get("allergies", ()):
            a = next(x for x in cat.ALLERGIES if x[0] == key)
            aid = self.res_id("alg")
            day = items[1][0]["period"]["start"][:10] if len(items) > 1 else None
            self.truth.code(self.id, "emr", SNOMED, a[3], a[1], "allergy", "SNOMED", a[3], cat.concept_id("allergy", key))
            al = {"resourceType": "AllergyIntolerance", "id": aid,
                  "clinicalStatus": {"coding": [{
                      "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                  "verificationStatus": {"coding": [{
                      "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                      "code": "confirmed"}]},
                  "code": {"coding": [{"system": SNOMED, "code": a[3], "display": a[1]}]},
                  "patient": {"reference": f"Patient/{reg.patient_id}"}}
            if day:
                al["recordedDate"] = day
            items.append((al, [{"person": person["person"], "kind": "observation", "date": day,
                                "concept_id": cat.concept_id("allergy", key), "value_as_number": None,
                                "unit_concept_id": None, "_mid": aid}], []))
        reg.systems.add("emr")
        reg.resources, after, reg.after = [], reg.after, []
        if self.fhir_mode == "bundle":
            self._put(items)
            self.later += after
            self.batch_records += 1
            if self.batch_records >= BUNDLE_RECORDS:
                self.write_bundle()
            return
        for res, f, dfs in items:
            sink = self.bulk[res["resourceType"]]
            data = orjson.dumps(res) + b"\n"
            if not dfs and rng.random() < p / 8:
                data = data[:-2] + b",\n"  # last brace replaced: unparseable line
                dfs = [("bad_json", None, None, "line is not valid JSON", res["id"])]
            rec = Record(data, res["id"], f, dfs)
            sink.add(rec)
            if not rec.quarantined and rng.random() < p / 8:
                sink.add(Record(data, res["id"], [], [("duplicate_message", None, None,
                                                       "same resource exported twice", None)]))
        for res, f, _ in after:  # the export's current state of what the EMR took back
            self.bulk[res["resourceType"]].add(Record(orjson.dumps(res) + b"\n", res["id"], f, []))

    def _put(self, items) -> None:
        """Resources (resource, facts, defects) into the transaction Bundle being filled (PUT Type/id)."""
        self.res_count += len(items)
        entries, facts, defects = self.batch
        for res, f, dfs in items:
            entries.append({"fullUrl": f"urn:uuid:{res['id']}", "resource": res,
                            "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}})
            facts += f
            defects += dfs

    def write_bundle(self) -> None:
        """One transaction Bundle with the resources of up to BUNDLE_RECORDS patient records (a sync batch)."""
        entries, facts, defects = self.batch
        if not entries:
            return
        bid = f"{self.id}-bundle-{self.next('bundle')}"
        data = orjson.dumps({"resourceType": "Bundle", "id": bid, "type": "transaction", "entry": entries})
        if self.rng.random() < self.rate and not defects:
            cut = data.index(b'"entry"') + 3
            data = data[:cut] + data[cut + 2:]
            defects.append(("bad_json", None, None, "JSON syntax broken near the start of the entry list", bid))
        self.bundles.add(Record(data, bid, facts, defects))
        self.batch = ([], [], [])
        self.batch_records = 0
        self._put(self.later)  # the corrections of the batch before, in the next
        self.later = []

    def close(self, transaction_time: str) -> None:
        for s in (self.his, self.lis, self.pharmacy):
            s.close_file(final=True)
        if self.fhir_mode == "bundle":
            self.write_bundle()
            self.write_bundle()  # the last batch's corrections
            self.bundles.close_file(final=True)
            return
        for u in sorted(self.located):  # the units the Encounters name, exported with them
            loc = {"resourceType": "Location", "id": f"{self.id}-loc-{u.lower()}", "status": "active",
                   "mode": "instance", "name": self.units[u], "address": SITE[self.profile]}
            self.bulk["Location"].add(Record(orjson.dumps(loc) + b"\n", loc["id"], [], []))
        out = []
        for t, sink in self.bulk.items():
            if sink.f is not None and self.rng.random() < self.rate * 5:
                sink.truncate_next = True
            n = sink.records
            sink.close_file(final=True)
            if n:
                out.append({"type": t, "url": f"{t}.ndjson", "count": n})
            elif not self.truth.discard:
                (self.out / sink.folder / f"{t}.ndjson").unlink(missing_ok=True)
        manifest = {"transactionTime": transaction_time, "request": f"https://emr.{self.id}.example/fhir/$export",
                    "requiresAccessToken": False, "output": out, "error": []}
        self.truth.write_file(self.out / self.id / "emr" / "bulk" / "manifest.json",
                              orjson.dumps(manifest, option=orjson.OPT_INDENT_2))

    def files(self) -> int:
        n = self.his.files + self.lis.files + self.pharmacy.files
        if self.fhir_mode == "bundle":
            return n + self.bundles.files
        return n + sum(1 for s in self.bulk.values() if s.records) + 1
