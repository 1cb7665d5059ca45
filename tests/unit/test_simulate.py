"""The simulated hospital: determinism, standard readers accept what is well formed, the ground truth is
complete and consistent (every defect is where it says), care is coherent."""
from __future__ import annotations

import base64
import codecs
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B import get_fhir_model_class

from medlake.simulate import catalog, simulate, writers
from medlake.simulate.people import check_digit, id_number, make_person, typo, valid_id_number

QUARANTINE = {"malformed_hl7", "bad_json", "truncated_file", "wrong_encoding", "missing_mandatory"}
REQUIRED_CLASSES = {"duplicate_identity", "name_typo", "pinyin_name", "dob_day_month_swap", "missing_id_number",
                    "duplicate_message", "out_of_order", "wrong_unit", "missing_unit", "impossible_value",
                    "death_before_birth", "future_date", "missing_mandatory", "unmapped_code", "malformed_hl7",
                    "bad_json", "truncated_file", "wrong_encoding"}
SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """A small group with a high defect rate, so that every defect class occurs."""
    out = tmp_path_factory.mktemp("sim") / "messy"
    simulate(out, patients=200, hospitals=3, seed=11, defect_rate=0.12)
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "clean"
    simulate(out, patients=150, hospitals=3, seed=5, defect_rate=0.0)
    return out


@pytest.fixture(scope="module")
def defects(messy) -> list[dict]:
    return jsonl(messy / "ground_truth" / "defects.jsonl")


def hl7_messages(path: Path):
    """(first line number, message text, lines) for each message in an HL7 file; batch segments skipped."""
    text = codecs.getincrementaldecoder("utf-8")().decode(path.read_bytes())  # a truncated file may end mid-character
    lines = text.split("\r")
    msgs, cur, start = [], None, 0
    for i, line in enumerate(lines, 1):
        if line.startswith("MSH|"):
            if cur:
                msgs.append((start, cur))
            cur, start = [line], i
        elif line[:3] in ("FHS", "BHS", "BTS", "FTS") or line == "":
            if cur:
                msgs.append((start, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    if cur:
        msgs.append((start, cur))
    return msgs


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------- people ----------

def test_gb11643_check_digit_known_and_generated():
    assert check_digit("11010519491231002") == "X"          # the standard's published example
    assert valid_id_number("11010519491231002X") and not valid_id_number("110105194912310021")
    rng = random.Random(3)
    for i in range(300):
        sex = "M" if i % 2 else "F"
        n = id_number("310104", dt.date(1950, 1, 1) + dt.timedelta(days=i * 97), sex, rng)
        assert valid_id_number(n) and int(n[16]) % 2 == (1 if sex == "M" else 0)
    p = make_person("P1", random.Random(1), dt.date(2015, 1, 1))
    assert p["sex"] in "MF" and p["birth_date"] < dt.date(2016, 1, 1)


def test_typo_always_changes_the_name():
    rng = random.Random(0)
    for name in ("伟", "王芳", "Smith", "Li", "欧阳", "Jo"):
        for _ in range(20):
            assert typo(name, rng) != name


# ---------- determinism ----------

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate(a, patients=60, hospitals=3, seed=9, defect_rate=0.05)
    # the second run in another process with another hash seed: no set or dict order may leak into the output
    code = f"from medlake.simulate import simulate; simulate({str(b)!r}, patients=60, hospitals=3, seed=9, " \
           "defect_rate=0.05)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    simulate(c, patients=60, hospitals=3, seed=10, defect_rate=0.05)
    da, db, dc = tree_digest(a), tree_digest(b), tree_digest(c)
    assert len(da) > 20 and da == db
    assert da != dc


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a simulate output"):
        simulate(tmp_path, patients=2)
    assert (tmp_path / "keep.txt").exists()


def test_discard_run_counts_the_bytes_of_a_written_run_and_writes_nothing(tmp_path):
    written = simulate(tmp_path / "w", patients=40, hospitals=3, seed=4, defect_rate=0.1)
    gone = simulate(tmp_path / "d", patients=40, hospitals=3, seed=4, defect_rate=0.1, discard=True)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "w").rglob("*") if f.is_file())
    assert written.bytes == on_disk > 1_000_000
    assert gone.bytes == on_disk and gone.discarded and not written.discarded
    assert (gone.files, gone.messages, gone.resources, gone.rows, gone.facts, gone.defects) == \
        (written.files, written.messages, written.resources, written.rows, written.facts, written.defects)
    assert not (tmp_path / "d").exists()


# ---------- layout and config ----------

def test_layout_and_sources_toml(messy):
    cfg = tomllib.loads((messy / "sources.toml").read_text(encoding="utf-8"))
    srcs = cfg["source"]
    assert len(srcs) == 12 and len({s["name"] for s in srcs}) == 12
    for s in srcs:
        assert (messy / s["path"]).is_dir(), s
        assert s["kind"] == {"his": "hl7v2", "lis": "hl7v2", "emr": "fhir", "pharmacy": "csv"}[s["system"]]
    assert list((messy / "h1/emr/bundles").glob("*.json")) and (messy / "h2/emr/bulk/manifest.json").exists()
    manifest = json.loads((messy / "h2/emr/bulk/manifest.json").read_text())
    assert {o["type"] for o in manifest["output"]} >= {"Patient", "Encounter", "Observation", "Condition"}
    for o in manifest["output"]:
        assert (messy / "h2/emr/bulk" / o["url"]).exists()
    pharmacy = {s["hospital"]: s for s in srcs if s["system"] == "pharmacy"}
    assert pharmacy["h2"]["encoding"] == "gbk" and pharmacy["h1"]["encoding"] == "utf-8"
    versions = {}
    for h in ("h1", "h2", "h3"):
        first = sorted((messy / h / "his").glob("*.hl7"))[0]
        versions[h] = hl7_messages(first)[0][1][0].split("|")[11]
    assert versions == {"h1": "2.5.1", "h2": "2.3", "h3": "2.8"}
    assert (messy / "h2/his/ADT_000001.hl7").read_bytes().startswith(b"FHS|")


# ---------- standard readers ----------

def test_every_well_formed_hl7_message_parses_with_python_hl7(messy, defects):
    broken = {(d["file"], d["message_id"]) for d in defects if d["class"] in QUARANTINE}
    parsed = 0
    for path in sorted(messy.glob("h*/*/*.hl7")):
        rel = str(path.relative_to(messy))
        for start, lines in hl7_messages(path):
            mid = lines[0].split("|")[9]
            if (rel, mid) in broken:
                continue
            msg = hl7.parse("\r".join(lines))
            assert str(msg.segment("MSH")[10]) == mid
            assert all(SEGMENT_ID.match(str(seg[0])) for seg in msg), (rel, start)
            assert str(msg.segment("PID")[3]).strip("^~") != "", (rel, mid)  # every patient is identified
            parsed += 1
    assert parsed > 2000


def test_fhir_sample_validates_with_fhir_resources_r4b(messy, defects):
    bad = {d["message_id"] for d in defects if d["class"] in QUARANTINE}
    resources = []
    for path in sorted(messy.glob("h*/emr/bundles/*.json")):
        data = path.read_bytes()
        try:
            bundle = json.loads(data)
        except ValueError:
            assert any(d["file"] == str(path.relative_to(messy)) for d in defects)
            continue
        resources += [e["resource"] for e in bundle["entry"]]
    for path in sorted(messy.glob("h*/emr/bulk/*.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                resources.append(json.loads(line))
            except ValueError:
                pass
    by_type = defaultdict(list)
    for r in resources:
        if r["id"] not in bad:
            by_type[r["resourceType"]].append(r)
    assert set(by_type) == {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
                            "AllergyIntolerance", "Immunization", "DocumentReference", "Location"}
    rng = random.Random(0)
    for rtype, items in sorted(by_type.items()):
        for r in rng.sample(items, min(20, len(items))):
            get_fhir_model_class(rtype).model_validate(r)
    # a resource named as missing a mandatory element is rejected by the validator
    missing = [d["message_id"] for d in defects if d["class"] == "missing_mandatory" and d["field"] == "Observation.code"]
    assert missing
    bad_obs = next(r for r in resources if r["id"] == missing[0])
    with pytest.raises(Exception):
        get_fhir_model_class("Observation").model_validate(bad_obs)


def test_notes_are_utf8_text_in_two_languages(messy):
    texts = []
    for path in sorted(messy.glob("h*/emr/bulk/DocumentReference.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            texts.append(base64.b64decode(r["content"][0]["attachment"]["data"]).decode("utf-8"))
    for path in sorted(messy.glob("h3/emr/bundles/*.json"))[:5]:
        try:
            b = json.loads(path.read_bytes())
        except ValueError:
            continue
        texts += [base64.b64decode(e["resource"]["content"][0]["attachment"]["data"]).decode("utf-8")
                  for e in b["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    joined = " ".join(texts)
    for phrase in ("否认", "考虑", "待排", "家族史", "Denies", "Possible", "Family history"):
        assert phrase in joined
    mentions = jsonl(messy / "ground_truth" / "note_mentions.jsonl")
    assert {m["assertion"] for m in mentions} == {"present", "negated", "possible", "family"}


def test_csv_reads_with_its_declared_encoding(messy, defects):
    cfg = tomllib.loads((messy / "sources.toml").read_text(encoding="utf-8"))
    undecodable = {(d["file"], d["line"]) for d in defects if d["class"] == "wrong_encoding"}
    truncated = {(d["file"], d["line"]) for d in defects if d["class"] == "truncated_file"}
    rows = 0
    for s in (s for s in cfg["source"] if s["kind"] == "csv"):
        for path in sorted((messy / s["path"]).glob("*.csv")):
            rel = str(path.relative_to(messy))
            raw = path.read_bytes().split(b"\n")
            good = []
            for n, line in enumerate(raw, 1):
                if not line:
                    continue
                try:
                    good.append(line.decode(s["encoding"]))
                except UnicodeDecodeError:
                    assert (rel, n) in undecodable, (rel, n)
                    continue
                assert (rel, n) not in undecodable, (rel, n)
            reader = csv.DictReader(io.StringIO("\n".join(good)), delimiter=s["delimiter"])
            assert set(s["columns"].values()) == set(reader.fieldnames)
            for n, row in enumerate(reader, 2):
                if any(f == rel for f, _ in truncated) and n == len(good):
                    continue
                stamp = row[s["columns"]["dispensed_at"]]
                dt.datetime.strptime(stamp, s["formats"]["dispensed_at"])
                rows += 1
    assert rows > 1000


# ---------- ground truth ----------

def test_every_defect_class_occurs_and_each_defect_is_where_it_says(messy, defects):
    assert REQUIRED_CLASSES <= {d["class"] for d in defects}
    assert len({d["defect_id"] for d in defects}) == len(defects)
    impossible = {d["detail"].split()[0] for d in defects if d["class"] == "impossible_value"}
    assert "body" in impossible and len(impossible - {"body"}) >= 4  # body temperature and the other vital signs
    assert impossible <= {"body", *writers.IMPOSSIBLE_ABOVE}  # (respiratory rate is taken at some visits only)
    cache: dict[str, bytes] = {}
    for d in defects:
        path = messy / d["file"]
        data = cache.setdefault(d["file"], path.read_bytes())
        cls, mid = d["class"], d["message_id"]
        assert mid and mid.encode() in data, d
        if d["byte_offset"] is not None:
            assert 0 <= d["byte_offset"] <= len(data), d
        if cls == "truncated_file":
            assert d["byte_offset"] == len(data), d
            continue
        if path.suffix == ".json":
            if cls == "bad_json":
                with pytest.raises(ValueError):
                    json.loads(data)
            continue
        sep = b"\r" if path.suffix == ".hl7" else b"\n"
        lines = data.split(sep)
        line = lines[d["line"] - 1]
        if cls == "malformed_hl7":
            assert not SEGMENT_ID.match(line[:3].decode("utf-8", "replace")), d
        elif cls == "wrong_encoding":
            with pytest.raises(UnicodeDecodeError):
                line.decode("utf-8")
        elif cls == "bad_json":
            with pytest.raises(ValueError):
                json.loads(line)
        elif path.suffix == ".ndjson":
            assert f'"id":"{mid}"'.encode() in line, d
            r = json.loads(line)
            if cls == "missing_unit":
                assert "unit" not in r["valueQuantity"]
            elif cls == "impossible_value":
                v, loinc = r["valueQuantity"]["value"], r["code"]["coding"][0]["code"]
                key = next(x.key for x in catalog.VITALS if x.loinc == loinc)
                assert v in (500.0, 3.7) if key == "temp" else v > writers.IMPOSSIBLE_ABOVE[key], d
            elif cls == "death_before_birth":
                assert r["deceasedDateTime"][:10] < r["birthDate"]
            elif cls == "future_date":
                assert r["effectiveDateTime"][:4] == "2050"  # 25 years after the simulated period
        elif path.suffix == ".hl7":
            text = line.decode("utf-8")
            f = text.split("|")
            if d["field"] and re.match(r"^[A-Z]{3}-\d+$", d["field"]):
                seg, num = d["field"].split("-")
                assert f[0] == seg, d
            if cls == "missing_mandatory":
                assert f[3] == "", d
            elif cls == "missing_unit":
                assert f[6] == "", d
            elif cls == "wrong_unit":
                assert f[6] and f"labelled '{hl7_unescape(f[6])}'" in d["detail"], d
            elif cls == "future_date":
                assert f[14][:4] == "2050", d
            elif cls == "dob_day_month_swap":
                assert f[7] == d["detail"].split()[2].replace("-", ""), d
            elif cls in ("name_typo", "pinyin_name"):
                shown = re.search(r"'([^']+)'", d["detail"]).group(1)
                assert shown.split()[0] in text, d
            elif cls == "unmapped_code":
                assert f[0] == "OBX", d
            elif cls in ("duplicate_message", "out_of_order"):
                assert text.startswith("MSH|") and f[9] == mid, d
        elif path.suffix == ".csv":
            assert mid.encode() in line, d


def test_wrong_unit_only_where_the_value_is_wrong_for_the_unit_written(messy, defects):
    """A unit label that differs from the one a LIS uses for that code is always a wrong_unit defect, and a
    wrong_unit defect is always between units that differ by a factor (never 10^9/L vs K/uL, ug/L vs ng/mL)."""
    units = {(r["hospital"], r["code"]): r["concept_code"] for r in jsonl(messy / "ground_truth" / "codes.jsonl")
             if r["kind"] == "unit"}
    labels = defaultdict(Counter)  # (hospital, local lab code) -> unit labels written
    obx = []
    copies = {(d["file"], d["line"]) for d in defects if d["class"] == "duplicate_message"}
    for path in sorted(messy.glob("h*/lis/*.hl7")):
        h, rel = path.parts[-3], str(path.relative_to(messy))
        for start, lines in hl7_messages(path):
            if (rel, start) in copies:  # a message sent twice: its defects are listed at the first copy
                continue
            for i, line in enumerate(lines, start):
                f = line.split("|")
                if f[0] == "OBX" and len(f) > 6 and f[6]:
                    label = hl7_unescape(f[6])
                    labels[h, f[3]][label] += 1
                    obx.append((rel, i, h, f[3], label))
    wrong = {(d["file"], d["line"]): d for d in defects if d["class"] == "wrong_unit"}
    relabelled = {(file, line) for file, line, h, code, label in obx
                  if label != labels[h, code].most_common(1)[0][0]}
    assert wrong and relabelled == set(wrong)
    factor_1 = [x for x in catalog.LABS if x.conv_unit and x.conv_factor == 1.0]
    assert factor_1  # the catalog has such pairs, and they are never swapped
    for (file, line), d in wrong.items():
        m = re.match(r"value (\S+) is in (\S+) but labelled '(.*)' \((\S+)\); in \S+ it would be (\S+)$",
                     d["detail"])
        assert m, d
        _, written_in, label, labelled_as, _ = m.groups()
        assert units[d["file"].split("/")[0], label] == labelled_as != written_in
        lab = next(x for x in catalog.LABS if {x.unit, x.conv_unit} == {written_in, labelled_as})
        assert lab.conv_factor != 1.0, d


def test_pharmacy_times_are_in_the_declared_format(tmp_path):
    from medlake.simulate.sinks import Truth
    from medlake.simulate.writers import Hospital
    truth = Truth(tmp_path, discard=True)
    d = dt.datetime(2019, 3, 7, 8, 5, 9)
    for i in range(3):
        h = Hospital(i, tmp_path, truth, 0.0, 1, dt.date(2025, 12, 31))
        assert h.csv_time(d) == d.strftime(h.date_format)
        assert dt.datetime.strptime(h.csv_time(d), h.date_format) <= d


def hl7_unescape(s: str) -> str:
    return s.replace("\\S\\", "^").replace("\\F\\", "|").replace("\\R\\", "~").replace("\\T\\", "&").replace(
        "\\E\\", "\\")


def test_duplicates_really_repeat_and_out_of_order_discharges_precede_admission(messy, defects):
    ids = Counter()
    for path in messy.glob("h*/*/*.hl7"):
        for _, lines in hl7_messages(path):
            ids[lines[0].split("|")[9]] += 1
    dups = [d for d in defects if d["class"] == "duplicate_message" and d["file"].endswith(".hl7")]
    assert dups and all(ids[d["message_id"]] >= 2 for d in dups)
    for d in (d for d in defects if d["class"] == "out_of_order"):
        lines = (messy / d["file"]).read_bytes().split(b"\r")
        assert b"ADT^A03" in lines[d["line"] - 1]


EMR_FIXES = {"encounter_entered_in_error", "deceased_in_error", "amended_result"}


def test_corrections_are_the_messages_they_say(tmp_path):
    """Each error the HIS takes back (ground_truth/corrections.jsonl) is its messages, in time order, in its
    hospital's ADT feed, whole (never a defect's message), and carries no fact. Each the EMR takes back is its
    resource: version 1 (a sync batch) and version 2 in a later batch, or only version 2 in a bulk export; an
    amended result's fact is its version 2's value."""
    out = tmp_path / "sim"
    simulate(out, patients=60, hospitals=2, seed=11, correction_rate=0.3)
    msgs = {}
    for path in out.glob("h*/his/*.hl7"):
        for _, lines in hl7_messages(path):
            seg = {x[:3]: x.split("|") for x in lines}
            pid, pv1 = seg.get("PID", []) + [""] * 31, seg.get("PV1", []) + [""] * 20  # A40: no PV1
            msgs[seg["MSH"][9]] = (path.parts[-3], seg["MSH"][6], seg["MSH"][8], pid[3].split("^")[0], pid[29:31],
                                   pv1[19].split("^")[0])
    versions = defaultdict(list)  # EMR resource id -> [(file, version, resource)] in file order
    for path in sorted(out.glob("h*/emr/bundles/*.json")):
        with contextlib.suppress(ValueError):
            for e in json.loads(path.read_bytes())["entry"]:
                versions[e["resource"]["id"]].append((path.parts[-4], path.name, e["resource"]))
    for path in sorted(out.glob("h*/emr/bulk/*.ndjson")):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                versions[json.loads(line)["id"]].append((path.parts[-4], path.name, json.loads(line)))
    fixes = jsonl(out / "ground_truth" / "corrections.jsonl")
    emr_values = defaultdict(set)  # result id -> its facts' values
    for f in jsonl(out / "ground_truth" / "facts.jsonl"):
        emr_values[f["source"]["message_id"]].add(f["value_as_number"])
    seen = Counter()
    for c in fixes:
        if c["kind"] not in EMR_FIXES:
            continue
        got = versions[c["message_ids"][0]]
        assert {g[0] for g in got} == {c["hospital"]}
        res = [g[2] for g in got]
        assert [r["meta"]["versionId"] for r in res] in (["1", "2"], ["2"]), c  # (a bundle may have been cut)
        assert len({g[1] for g in got}) == len(got)  # the versions in different sync batches
        if c["kind"] == "deceased_in_error":
            assert res[-1]["deceasedBoolean"] is False and "deceasedDateTime" not in res[-1]
            assert len(res) == 1 or res[0]["deceasedDateTime"][:19] == c["start"]
        elif c["kind"] == "amended_result":
            value = res[-1]["valueQuantity"]["value"]
            assert res[-1]["status"] == "amended" and value in emr_values[c["message_ids"][0]]
            assert len(res) == 1 or res[0]["valueQuantity"]["value"] == round(value * 10, 2)
        else:
            assert res[-1]["status"] == "entered-in-error" and res[-1]["identifier"][0]["value"] == c["visit"]
            assert len(res) == 1 or res[0]["status"] == "in-progress"
        seen[c["kind"]] += 1
    shapes = {"cancelled_visit": [("A01", "A04"), ("A11",)], "cancelled_admit_time": [("A01",), ("A11",)],
              "cancelled_transfer": [("A02",), ("A12",)], "cancelled_discharge": [("A03",), ("A13",)]}
    for c in fixes:
        if c["kind"] in EMR_FIXES:
            continue
        got = [msgs[m] for m in c["message_ids"]]
        assert {(g[0], g[3], g[5]) for g in got} == {(c["hospital"], c["mrn"], c["visit"])}, c
        start = c["start"].replace("-", "").replace("T", "").replace(":", "")[:12]
        assert [g[1] for g in got] == sorted(g[1] for g in got)
        assert all(g[1] < start if c["kind"] in ("cancelled_visit", "cancelled_admit_time") else g[1] > start
                   for g in got)  # before the stay's own first message; a stay's own errors after its start
        events = [g[2].split("^")[1] for g in got]
        if c["kind"] == "retracted_death":
            assert events == ["A08", "A08"] and got[0][4][1] == "Y" and got[0][4][0] and got[1][4] == ['""', "N"]
        else:
            assert all(e in allowed for e, allowed in zip(events, shapes[c["kind"]])), c
        seen[c["kind"]] += 1
    assert set(seen) == {"cancelled_visit", "cancelled_admit_time", "retracted_death", "cancelled_transfer",
                         "cancelled_discharge"} | EMR_FIXES
    ids = {m for c in fixes for m in c["message_ids"]}
    assert not ids & {d["message_id"] for d in jsonl(out / "ground_truth" / "defects.jsonl")
                      if d["class"] != "duplicate_message"}
    ids -= {c["message_ids"][0] for c in fixes if c["kind"] == "amended_result"}  # (its true value is a fact)
    assert not ids & {f["source"]["message_id"] for f in jsonl(out / "ground_truth" / "facts.jsonl")}
    assert simulate(tmp_path / "none", patients=60, hospitals=2, seed=11, correction_rate=0).patients == 60
    assert (tmp_path / "none" / "ground_truth" / "corrections.jsonl").read_bytes() == b""


def test_identities_cover_every_source_identifier(messy, defects):
    ident = {(r["hospital"], r["system"], r["id_type"], r["source_id"]): r["person"]
             for r in jsonl(messy / "ground_truth" / "identities.jsonl")}
    persons = {r["person"] for r in jsonl(messy / "ground_truth" / "persons.jsonl")}
    assert set(ident.values()) <= persons
    broken = {d["message_id"] for d in defects if d["class"] in QUARANTINE}
    seen = 0
    for path in sorted(messy.glob("h*/*/*.hl7")):
        h, system = path.parts[-3], path.parts[-2]
        for _, lines in hl7_messages(path):
            if lines[0].split("|")[9] in broken:
                continue
            pid = next(x for x in lines if x.startswith("PID|")).split("|")
            mrn = pid[3].split("~")[0].split("^")[0]
            assert (h, system, "mrn", mrn) in ident, (path, mrn)
            merge = next((x for x in lines if x.startswith("MRG|")), None)
            if merge:  # both records of a merge are the same person
                old = merge.split("|")[1].split("^")[0]
                assert ident[(h, system, "mrn", old)] == ident[(h, system, "mrn", mrn)]
            seen += 1
    for path in sorted(messy.glob("h*/emr/bulk/Patient.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            assert (path.parts[-4], "emr", "patient_resource", r["id"]) in ident
            seen += 1
    assert seen > 1000
    # duplicate registrations: two MRNs, one person
    per_person = Counter((h, s, p) for (h, s, t, _), p in ident.items() if t == "mrn" and s == "his")
    assert any(n > 1 for n in per_person.values())


def test_codes_cover_every_local_code_and_map_to_demo_concepts(messy, defects):
    codes = {(r["hospital"], r["system"], r["code_system"], r["code"]): r
             for r in jsonl(messy / "ground_truth" / "codes.jsonl")}
    concepts = {int(line.split("\t")[0]) for line in
                (Path(catalog.__file__).parents[1] / "cdm" / "demo_vocab" / "CONCEPT.csv").read_text().splitlines()[1:]}
    for r in codes.values():
        assert r["concept_id"] == 0 or r["concept_id"] in concepts, r
    assert any(r["concept_id"] == 0 for r in codes.values())
    broken = {d["message_id"] for d in defects if d["class"] in QUARANTINE}
    for path in sorted(messy.glob("h*/lis/*.hl7")):
        h = path.parts[-3]
        for _, lines in hl7_messages(path):
            if lines[0].split("|")[9] in broken:
                continue
            for x in lines:
                if x.startswith("OBX|"):
                    code, _, system = x.split("|")[3].split("^")
                    assert (h, "lis", system, code) in codes, x
    cfg = tomllib.loads((messy / "sources.toml").read_text(encoding="utf-8"))
    for s in (s for s in cfg["source"] if s["kind"] == "csv"):
        enc = s["encoding"]
        for path in sorted((messy / s["path"]).glob("*.csv")):
            text = path.read_bytes().decode(enc, errors="replace")
            for row in csv.DictReader(io.StringIO(text), delimiter=s["delimiter"]):
                code = row[s["columns"]["drug_code"]]
                if code and "\ufffd" not in code and row[s["columns"]["dispensed_at"]]:
                    assert (s["hospital"], "pharmacy", s["code_systems"]["drug_code"], code) in codes, row


def test_facts_point_at_real_records_and_concepts(messy, defects):
    facts = jsonl(messy / "ground_truth" / "facts.jsonl")
    persons = {r["person"] for r in jsonl(messy / "ground_truth" / "persons.jsonl")}
    kinds = Counter(f["kind"] for f in facts)
    assert {"visit", "condition", "measurement", "drug", "procedure", "observation", "note"} <= set(kinds)
    quarantined = {(d["file"], d["message_id"]) for d in defects if d["class"] in QUARANTINE}
    cache: dict[str, bytes] = {}
    for f in facts[::7]:
        src = f["source"]
        assert f["person"] in persons
        assert (src["file"], src["message_id"]) not in quarantined
        data = cache.setdefault(src["file"], (messy / src["file"]).read_bytes())
        assert src["message_id"].encode() in data, f
        assert src["file"].startswith(src["hospital"] + "/" + src["system"] + "/")
        dt.date.fromisoformat(f["date"])
    deaths = [f for f in facts if f["kind"] == "death"]
    dead = {r["person"]: r["death_date"] for r in jsonl(messy / "ground_truth" / "persons.jsonl") if r["death_date"]}
    assert deaths and all(dead[f["person"]] == f["date"] for f in deaths)


def test_care_is_coherent(clean):
    assert (clean / "ground_truth" / "defects.jsonl").read_bytes() == b""
    facts = jsonl(clean / "ground_truth" / "facts.jsonl")
    by_person = defaultdict(list)
    for f in facts:
        by_person[f["person"]].append(f)
    cid = catalog.concept_id

    def having(kind, ids):
        return {p for p, fs in by_person.items() if any(f["kind"] == kind and f["concept_id"] in ids for f in fs)}

    t2dm = having("condition", {cid("condition", "t2dm")})
    diabetes_drugs = {cid("drug", k) for k in catalog.CONDITION["t2dm"].drugs}
    glycaemia = {cid("lab", k) for k in ("hba1c", "glu_f", "glu")}
    assert len(t2dm) >= 3
    assert len(t2dm & having("drug", diabetes_drugs)) >= 0.9 * len(t2dm)
    assert len(t2dm & having("measurement", glycaemia)) >= 0.8 * len(t2dm)
    htn = having("condition", {cid("condition", "htn")})
    assert len(htn & having("drug", {cid("drug", k) for k in catalog.CONDITION["htn"].drugs})) >= 0.9 * len(htn)
    assert htn <= having("measurement", {cid("vital", "sbp")})
    # pregnancies only for women, within visits; no fact after death
    persons = {r["person"]: r for r in jsonl(clean / "ground_truth" / "persons.jsonl")}
    for p in having("condition", {cid("condition", "pregnancy")}):
        assert persons[p]["sex"] == "F"
    for p, fs in by_person.items():
        death = persons[p]["death_date"]
        if death:
            assert max(f["date"] for f in fs) <= death
        assert min(f["date"] for f in fs) >= persons[p]["birth_date"]
    for r in persons.values():
        if r["id_number"]:
            assert valid_id_number(r["id_number"])
            assert r["id_number"][6:14] == r["birth_date"].replace("-", "")


def test_catalog_sizes_and_vocabulary_ids():
    assert len(catalog.CONDITIONS) >= 30 and len(catalog.LABS) >= 40 and len(catalog.DRUGS) >= 40
    v = catalog.demo_vocabulary()
    ids = [c[0] for c in v["concepts"]]
    assert len(ids) == len(set(ids))
    real = set(catalog.KNOWN_IDS.values())
    assert all(i in real or 2_000_000_000 <= i < 2**31 for i in ids)  # never an invented id in Athena's range
    std = {c[0] for c in v["concepts"] if c[5] == "S"}
    src = {c[0] for c in v["concepts"] if c[3] in ("ICD10CM", "ICD10CN")}
    maps = {a: b for a, b, r in v["relationships"] if r == "Maps to"}
    assert src and all(maps[s] in std for s in src)
    assert any(lang == catalog.CHINESE for _, _, lang in v["synonyms"])
    for c in catalog.CONDITIONS:
        assert re.match(r"^[A-Z]\d{2}(\.\d{3}(x\d{3})?|\.x\d{2}x\d{3})?$", c.icd10cn), c.icd10cn
