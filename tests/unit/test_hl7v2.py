"""HL7 v2 parser, splitter, staging and ACKs: every shared sample, and one small message per quirk."""
import datetime as dt
from pathlib import Path

import hl7 as python_hl7
import pyarrow as pa
import pytest

from medlake.sources import hl7v2
from medlake.sources.hl7v2 import HL7Error, parse, split, stage

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "hl7"
FILES = sorted(SAMPLES.glob("*.hl7"))


def msg(*segments: str, end: str = "\r") -> bytes:
    return end.join(segments).encode() + end.encode()


MSH = "MSH|^~\\&|LIS|H1|MEDLAKE|H1|20240305101500+0800||ORU^R01^ORU_R01|C42|P|2.5.1"
PID = "PID|1||MRN001^^^H1^MR~110101199003071234^^^CHN^NI||Wang^Fang^^^^^L||19900307|F|||1 Main St^^Beijing^^100000^CHN||13800138000"


def test_the_shared_samples_are_all_there():
    assert len(FILES) == 20, "expected the 20 files described in ../shared/hl7/SOURCES.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_shared_sample_parses_and_stages(path):
    raws = list(split(path.read_bytes()))
    assert len(raws) == 1 and raws[0].error is None
    m = parse(raws[0].data)
    assert m.type.split("^")[0] in {"ADT", "ORU", "ORM", "OML", "RDE", "VXU", "MDM", "PPR"}
    assert m.version.startswith("2.") and m.control_id
    rows = stage(m)
    assert rows["stg_hl7_message"][0]["control_id"] == m.control_id
    assert len(rows["stg_hl7_patient"]) == 1 and rows["stg_hl7_patient"][0]["patient_id"]
    for table, rs in rows.items():
        t = pa.Table.from_pylist(rs, schema=hl7v2.STAGING_SCHEMAS[table])  # typed as the schema says
        assert t.num_rows == len(rs)
        assert all(set(r) <= set(hl7v2.STAGING_SCHEMAS[table].names) for r in rs)


def test_sample_lab_results_are_staged_as_written():
    m = parse((SAMPLES / "msft_LAB-ORU-1.hl7").read_bytes())
    assert (m.type, m.trigger, m.version, m.control_id) == ("ORU^R01", "R01", "2.5", "182")
    obs = stage(m)["stg_hl7_observation"]
    got = [(o["order_code"], o["code"], o["value_type"], o["value_number"], o["units"], o["abnormal_flags"],
            o["result_status"], o["observation_time"]) for o in obs]
    assert got[:5] == [
        ("24317-0", "11156-7", "NM", None, None, None, "I", None),
        ("24317-0", "11273-0", "NM", 4.06, "tera.l-1", "N", "P", dt.datetime(2014, 10, 6, 6, 27)),
        ("24317-0", "20509-6", "NM", None, None, None, "I", None),
        ("24317-0", "20570-8", "NM", 40.1, "%", "N", "P", dt.datetime(2014, 10, 6, 8, 30)),
        ("24317-0", "11125-2", "NM", 221.0, "giga.l-1", "N", "F", dt.datetime(2014, 10, 6, 8, 30)),
    ]
    assert [o["code"] for o in obs[5:]] == ["23761-0", "26450-7", "26478-8", "26485-3", "30180-4"]
    assert {o["patient_id"] for o in obs} == {"10006579"}
    assert [o["segment_line"] for o in obs[:2]] == [4, 5]


def test_sample_structured_numeric_and_reference_range():
    obx = stage(parse((SAMPLES / "msft_ORU-R01-RMGEAD.hl7").read_bytes()))["stg_hl7_observation"][0]
    assert (obx["value_type"], obx["value_number"], obx["units"], obx["reference_range"], obx["range_low"],
            obx["range_high"], obx["abnormal_flags"]) == ("SN", 182.0, "mg/dl", "70_105", 70.0, 105.0, "H")
    assert obx["observation_time"] == dt.datetime(2002, 2, 15, 7, 30)  # from OBR-7: OBX-14 is empty


def test_sample_merge_and_batch_and_problem():
    rows = stage(parse((SAMPLES / "msft_ADT-A40-01.hl7").read_bytes()))
    merge = rows["stg_hl7_merge"][0]
    assert (merge["event_type"], merge["patient_id"], merge["prior_patient_id"], merge["prior_patient_id_type"],
            merge["prior_patient_id_authority"]) == ("A40", "12345", "56789", "MR", "BCBS")
    assert rows["stg_hl7_message"][0]["event_time"] == dt.datetime(2019, 4, 23, 15, 1, 37)

    data = (SAMPLES / "cdc_Example-hl7-file_batch.hl7").read_bytes()
    (raw,) = split(data)
    assert (raw.offset, raw.line) == (274, 3) and raw.data.startswith(b"MSH|")
    m = parse(raw.data)
    assert (m.charset, m.codec, m.control_id) == ("UNICODE UTF-8", "utf-8", "1234d1d1-95fe-462c-8ac6-46728dba581c")
    obs = stage(m)["stg_hl7_observation"]
    assert [(o["code"], o["value_code"], o["value_code_text"]) for o in obs][:2] == [
        ("94558-4", "260415000", "Not detected"), ("95418-0", "N", "No")]

    prb = stage(parse((SAMPLES / "msft_PC1-Problem-Add-v2.3.1.hl7").read_bytes()))["stg_hl7_diagnosis"][0]
    assert (prb["source_segment"], prb["code"], prb["code_text"], prb["code_system"], prb["action"]) == \
        ("PRB", "596.5", "BLADDER DYSFUNCTION", "I9", "AD")


def test_sample_quirks_doubled_escape_in_msh2_and_crlf_and_prt_in_251():
    m = parse((SAMPLES / "lfh_sample_win.hl7").read_bytes())  # MSH-2 written ^~\\&, CRLF ends
    assert m.delims[:5] == ("|", "^", "~", "\\", "&")
    assert m.get("PID-5.2") == "JOHN" and m.get("PID-3(2).1") == "1234568965"
    assert m.get("MSH-2") == "^~\\\\&"
    m = parse((SAMPLES / "msft_ORU-R01-01.hl7").read_bytes())  # PRT only exists from v2.7: kept anyway
    assert m.version == "2.5.1" and len(m.all("PRT")) == 8
    nte = m.all("NTE")[0]
    assert "Yersinia, E.coli O157:H7 & other STECs" in nte.get(3)  # \T\ is the subcomponent separator


def test_adt_patient_and_visit_rows_mark_identifying_columns():
    rows = stage(parse((SAMPLES / "msft_ADT01-23.hl7").read_bytes()))
    p = rows["stg_hl7_patient"][0]
    assert {k: p[k] for k in ("patient_id", "patient_id_type", "family_name", "given_name", "birth_date", "sex",
                              "address_street", "address_city", "address_postal_code", "phone_home")} == {
        "patient_id": "10006579", "patient_id_type": "MR", "family_name": "DUCK", "given_name": "DONALD",
        "birth_date": dt.date(1924, 10, 10), "sex": "M", "address_street": "111 DUCK ST",
        "address_city": "FOWL", "address_postal_code": "999990000", "phone_home": "8885551212"}
    v = rows["stg_hl7_visit"][0]
    assert (v["patient_class"], v["point_of_care"], v["room"], v["bed"], v["visit_number"], v["admit_time"]) == \
        ("I", "PREOP", "101", "1", "40007716", dt.datetime(2005, 1, 10, 4, 55, 2))
    d = rows["stg_hl7_diagnosis"][0]
    assert (d["code"], d["code_system"], d["description"]) == ("71596", "I9", "OSTEOARTHROS NOS-L/LEG ")

    schema = hl7v2.STAGING_SCHEMAS["stg_hl7_patient"]
    ident = {f.name for f in schema if (f.metadata or {}).get(b"identifying") == b"true"}
    assert {"patient_id", "national_id", "family_name", "given_name", "birth_date", "address_street",
            "phone_home", "identifiers", "names"} <= ident
    assert not {"sex", "race", "control_id", "event_time", "death_time"} & ident
    for name, schema in hl7v2.STAGING_SCHEMAS.items():
        assert name.startswith("stg_hl7_")
        assert schema.names[:4] == ["control_id", "message_type", "event_time", "segment_line"]
        if "patient_id" in schema.names:
            assert schema.field("patient_id").metadata == {b"identifying": b"true"}


def test_national_id_and_chinese_name_in_gb18030():
    text = "\r".join([MSH + "||||||GB 18030-2000",
                      "PID|1||MRN001^^^H1^MR~110101199003071234^^^CHN^NI||王^芳^^^^^L~Wang^Fang^^^^^P||19900307|F"])
    data = text.encode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    m = parse(data)
    assert (m.charset, m.codec) == ("GB 18030-2000", "gb18030")
    p = stage(m)["stg_hl7_patient"][0]
    assert (p["family_name"], p["given_name"], p["national_id"], p["national_id_type"]) == \
        ("王", "芳", "110101199003071234", "NI")
    assert p["names"] == "王^芳^^^^^L~Wang^Fang^^^^^P"
    # the ACK goes back in the sender's character set
    a = hl7v2.ack(m, "AE", "病人ID缺失")
    assert "病人ID缺失" in a.decode("gb18030") and parse(a).charset == "GB 18030-2000"


@pytest.mark.parametrize("charset,codec,name", [
    ("8859/1", "latin-1", "Müller"), ("UNICODE UTF-8", "utf-8", "Zoë 李"), ("", "utf-8", "Ærøskøbing"),
    ("GBK", "gbk", "张伟")])
def test_msh18_character_sets(charset, codec, name):
    data = f"{MSH}||||||{charset}\rPID|1||X1^^^H1^MR||{name}^A".encode(codec)
    assert parse(data).get("PID-5.1") == name


def test_wrong_or_unknown_character_set_is_an_error_naming_msh18():
    data = f"{MSH}||||||UNICODE UTF-8\rPID|1||X1||张伟".encode("gb18030")
    with pytest.raises(HL7Error) as e:
        parse(data)
    assert e.value.field == "MSH-18" and e.value.control_id == "C42" and "not valid utf-8" in str(e.value)
    with pytest.raises(HL7Error, match="unknown character set 'KLINGON'") as e:
        parse(f"{MSH}||||||KLINGON\rPID|1||X1".encode())
    assert e.value.field == "MSH-18"


def test_escape_sequences():
    d = ("|", "^", "~", "\\", "&", "")
    assert hl7v2.unescape(r"a\F\b\S\c\T\d\R\e\E\f", d) == "a|b^c&d~e\\f"
    assert hl7v2.unescape("line 1\\.br\\line 2\\X0A\\\\X41\\", d) == "line 1\nline 2\nA"
    assert hl7v2.unescape(r"\H\bold\N\ \Zlocal\ \Q\ odd\ open\end", d) == r"bold \Zlocal\ \Q\ odd\ open\end"
    for text in ["a|b^c&d~e\\f", "two\nlines", "plain"]:
        assert hl7v2.unescape(hl7v2.escape(text, d), d) == text
    m = parse(msg(MSH, PID, r"OBX|1|TX|NOTE^Note||Na\T\K \S\ 5\F\6 \E\ \X4F4B\ \.br\end"))
    assert stage(m)["stg_hl7_observation"][0]["value_text"] == "Na&K ^ 5|6 \\ OK \nend"
    # \X..\ bytes decode in the message's character set
    gb = f"{MSH}||||||GB 18030-2000\rOBX|1|ST|T^t||\\X{'李'.encode('gb18030').hex().upper()}\\".encode()
    assert parse(gb).get("OBX-5") == "李"


def test_other_delimiters_and_repetitions_components_subcomponents():
    m = parse(b"MSH#$*!@#A#B#C#D#20240101##ADT$A01#X9#P#2.3\rPID#1##ID1$$$AUTH@1.2@ISO$MR*ID2$$$$NI##Li$Lei")
    assert m.delims[:5] == ("#", "$", "*", "!", "@") and m.type == "ADT^A01"
    assert m.get("PID-3.1") == "ID1" and m.get("PID-3(2).1") == "ID2" and m.get("PID-3.4.2") == "1.2"
    assert m.get("PID-5.2") == "Lei" and m.get("PID-9") == "" and m.get("ZZZ-1") == ""
    p = stage(m)["stg_hl7_patient"][0]
    assert (p["patient_id"], p["patient_id_authority"], p["national_id"]) == ("ID1", "AUTH", "ID2")
    with pytest.raises(ValueError, match="not an HL7 field path"):
        m.get("PID3")


def test_cr_lf_crlf_and_bom_give_the_same_rows():
    segs = (MSH, PID, "OBR|1|P1|F1|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5.6|mmol/L|3.9-6.1|N|||F|||20240305")
    want = stage(parse(msg(*segs)))
    for end in ("\n", "\r\n"):
        assert stage(parse(msg(*segs, end=end))) == want
    assert stage(parse(hl7v2.BOM + msg(*segs))) == want
    assert stage(parse(msg(*segs).decode())) == want  # str input
    assert want["stg_hl7_observation"][0]["range_low"] == 3.9


def test_unknown_and_z_segments_are_kept():
    m = parse(msg(MSH, PID, "ZPI|1|custom^stuff", "XYZ|odd"))
    assert [s.name for s in m.segments] == ["MSH", "PID", "ZPI", "XYZ"]
    assert m.segment("ZPI").get(2, 2) == "stuff"
    assert stage(m)["stg_hl7_message"][0]["segment_names"] == "MSH PID ZPI XYZ"


def test_split_files_batches_garbage_and_lines():
    one = msg(MSH, PID)
    two = msg(MSH.replace("C42", "C43"), PID)
    data = b"FHS|^~\\&\rBHS|^~\\&\r" + one + b"\r\n" + two + b"BTS|2\rFTS|1\r"
    raws = list(split(data))
    assert [(r.line, r.error) for r in raws] == [(3, None), (6, None)]
    assert raws[0].data == one.rstrip(b"\r") and raws[1].data == two.rstrip(b"\r")
    assert data[raws[1].offset:].startswith(b"MSH|") and [parse(r.data).control_id for r in raws] == ["C42", "C43"]
    # garbage before and between messages comes out on its own, with where it was
    data = b"\xef\xbb\xbfjunk line\n" + msg(MSH, PID, end="\n") + b"BTS|1\nnot hl7 at all\n" + msg(MSH, PID, end="\n")
    raws = list(split(data))
    assert [(r.data[:8], r.line, r.offset) for r in raws] == [
        (b"junk lin", 1, 3), (b"MSH|^~\\&", 2, 13), (b"not hl7 ", 5, data.index(b"not")), (b"MSH|^~\\&", 6, data.rindex(b"MSH"))]
    with pytest.raises(HL7Error, match="does not start with an MSH"):
        parse(raws[0].data)
    assert list(split(b"")) == [] and list(split(b"\r\n\r\n")) == []


def test_split_flags_truncated_files():
    data = b"FHS|^~\\&\rBHS|^~\\&\r" + msg(MSH, PID) + msg(MSH, "PID|1||MRN0")
    raws = list(split(data))
    assert raws[0].error is None and "truncated" in raws[1].error
    raws = list(split(msg(MSH, PID) + msg(MSH, PID)[:-9]))  # CR-terminated file cut inside its last segment
    assert raws[0].error is None and "no final segment terminator" in raws[1].error
    assert list(split(msg(MSH, PID) + msg(MSH, PID)))[1].error is None


def test_split_flags_mllp_frames_without_their_end_block():
    """A frame cut off (no 0x1C before the next message or the end) in a framed stream, or alone as the listener
    lands a frame it read only part of; a file of start blocks only is read as it is."""
    a, b, c = (msg(MSH.replace("C42", x), PID) for x in ("C1", "C2", "C3"))
    cut = "the MLLP frame has no end block (0x1C): cut off?"
    errors = lambda data: [(parse(r.data).control_id, r.error) for r in split(data)]  # noqa: E731
    assert errors(b"\x0b" + a) == [("C1", cut)]
    assert errors(b"\x0b" + a + b"\x1c\r\x0b" + b + b"\x0b" + c + b"\x1c\r") == [("C1", None), ("C2", cut), ("C3", None)]
    assert errors(b"\x0b" + a + b"\x1c\r\x0b" + b) == [("C1", None), ("C2", cut)]
    assert errors(b"\x0b" + a + b"\x1c\r\x0b" + b + b"\x1c\r") == [("C1", None), ("C2", None)]
    assert errors(b"\x0b" + a + b"\x0b" + b) == errors(a + b) == [("C1", None), ("C2", None)]


@pytest.mark.parametrize("data,field,reason", [
    (b"PID|1||X\r", "MSH", "does not start with an MSH"),
    (b"MSH|^~\\&|A|B|C|D|2024||ADT^A01\rPID|1||X", "MSH-10", "control ID"),
    (b"MSH|^~\\&|A|B|C|D|2024||^|C1\rPID|1||X", "MSH-9", "message type"),
    (b"MSHa^~\\&|A", "MSH-1", "field separator"),
    (b"MSH|ab12|A", "MSH-2", "encoding characters"),
    (msg(MSH.replace("ORU^R01^ORU_R01", "ADT^A01"), "EVN|A01|20240101", "PV1|1|I"), "PID", "PID segment is missing"),
    (msg(MSH, "PID|1||^^^H1^MR||Wang^Fang"), "PID-3", "patient identifier"),
    (msg(MSH, PID, "OBR|1|P1|F1|GLU^Glucose", "OBX|1|NM|||5.6|mmol/L"), "OBX-3", "observation identifier"),
    (msg(MSH, PID, "OBR|1|P1|F1|"), "OBR-4", "universal service"),
    (msg(MSH.replace("ORU^R01^ORU_R01", "VXU^V04"), PID, "RXA|0|1|20240101||"), "RXA-5", "administered code"),
    (msg(MSH.replace("ORU^R01^ORU_R01", "ADT^A40"), PID, "MRG|"), "MRG-1", "prior patient"),
])
def test_unparseable_or_invalid_messages_raise_hl7error_naming_the_field(data, field, reason):
    with pytest.raises(HL7Error, match=reason) as e:
        stage(parse(data))
    assert e.value.field == field


def test_errors_say_where_and_which_message():
    with pytest.raises(HL7Error) as e:
        parse(msg(MSH, PID, "this is not a segment"))
    assert (e.value.line, e.value.control_id) == (3, "C42") and "line 3 is not an HL7 segment" in str(e.value)
    with pytest.raises(HL7Error, match="second MSH segment at line 3"):
        parse(msg(MSH, PID, MSH))
    with pytest.raises(HL7Error) as e:
        stage(parse(msg(MSH, PID, "OBR|1|P1|F1|G^G", "OBX|1|NM|||5")))
    assert str(e.value) == ("the observation identifier (OBX-3) is empty "
                            "(field OBX-3, segment line 4, message C42)")


def test_unreadable_values_stage_as_null_with_a_note():
    m = parse(msg(MSH, PID.replace("19900307", "19901307"),
                  "OBX|1|NM|GLU^Glucose||high|mmol/L|||||F|||2024030599"))
    rows = stage(m)
    p, o = rows["stg_hl7_patient"][0], rows["stg_hl7_observation"][0]
    assert p["birth_date"] is None and p["notes"] == "PID-7: '19901307' is not a valid date/time"
    assert (o["value_number"], o["value_text"], o["observation_time"]) == (None, "high", None)
    assert o["notes"] == "OBX-5: 'high' is not a number (OBX-2 is NM); OBX-14: '2024030599' is not a valid date/time"


def test_numbers_past_a_doubles_range_or_not_numbers_stage_as_null_with_a_note():
    m = parse(msg(MSH, PID, "OBX|1|NM|GLU^Glucose||1e400|mmol/L|3.9-6.1|||F", "OBX|2|SN|X^x||^inf",
                  "OBX|3|SN|X^x||^1^-^1e999", "OBX|4|NM|X^x||2|u|1-" + "9" * 400))
    a, b, c, d = stage(m)["stg_hl7_observation"]
    assert (a["value_number"], a["value_text"], a["range_low"], a["range_high"]) == (None, "1e400", 3.9, 6.1)
    assert a["notes"] == "OBX-5: '1e400' is not a number (OBX-2 is NM)"
    assert (b["value_number"], b["notes"]) == (None, "OBX-5: 'inf' is not a structured numeric value")
    assert (c["value_number"], c["notes"]) == (None, "OBX-5: '1-1e999' is not a structured numeric value")
    assert (d["value_number"], d["range_low"], d["range_high"]) == (2.0, None, None)


def test_hl7_null_and_comparators():
    m = parse(msg(MSH, PID, 'OBX|1|NM|CRP^C-reactive protein||<5|mg/L|""|""|||F', 'OBX|2|SN|X^x||>=^10'))
    a, b = stage(m)["stg_hl7_observation"]
    assert (a["value_comparator"], a["value_number"], a["reference_range"], a["abnormal_flags"]) == ("<", 5.0, None, None)
    assert (b["value_comparator"], b["value_number"]) == (">=", 10.0)


def test_document_and_medication_messages():
    mdm = msg(MSH.replace("ORU^R01^ORU_R01", "MDM^T02"), PID, "TXA|1|DS|TX|20240301||20240301||||||DOC1|||||AU",
              "OBX|1|TX|DS^Discharge summary||Patient well.~Discharged home.", "OBX|2|TX|DS||Follow up in 2 weeks.")
    doc = stage(parse(mdm))["stg_hl7_document"]
    assert len(doc) == 1 and (doc[0]["document_type"], doc[0]["document_id"], doc[0]["completion_status"]) == \
        ("DS", "DOC1", "AU")
    assert doc[0]["text"] == "Patient well.\nDischarged home.\nFollow up in 2 weeks."
    rds = msg(MSH.replace("ORU^R01^ORU_R01", "RDS^O13"), PID, "ORC|RE|ORD1", "RXD|1|860975^Metformin 500 mg^RXNORM|"
              "20240302|60|TAB|TAB|RX9", "RXR|PO^Oral")
    med = stage(parse(rds))["stg_hl7_medication"][0]
    assert (med["source_segment"], med["drug_code"], med["drug_name"], med["quantity"], med["quantity_units"],
            med["dispensed_time"], med["route"], med["placer_number"]) == (
        "RXD", "860975", "Metformin 500 mg", 60.0, "TAB", dt.datetime(2024, 3, 2), "PO", "ORD1")


def test_ack_for_messages_and_for_garbage():
    m = parse(msg(MSH, PID))
    a = parse(hl7v2.ack(m))
    assert (a.type, a.get("MSA-1"), a.get("MSA-2"), a.version) == ("ACK^R01", "AA", "C42", "2.5.1")
    assert (a.get("MSH-3"), a.get("MSH-5")) == ("MEDLAKE", "LIS")  # sender and receiver swap
    e = hl7v2.ack(msg(MSH, "PID|1||"), "AE", "the patient identifier (PID-3) is empty | really",
                  error_field="PID-3")
    e = parse(e)
    assert e.get("MSA-1") == "AE" and e.get("MSA-3") == "the patient identifier (PID-3) is empty | really"
    assert (e.get("ERR-2.1"), e.get("ERR-2.3"), e.get("ERR-3.1"), e.get("ERR-8")) == ("PID", "3", "207", e.get("MSA-3"))
    r = hl7v2.ack(b"\x00garbage", "AR", "not HL7")
    assert parse(r).get("MSA-1") == "AR" and parse(r).get("MSA-2") == ""
    assert str(python_hl7.parse(hl7v2.ack(m).decode()).segment("MSA")[1]) == "AA"
    with pytest.raises(ValueError):
        hl7v2.ack(m, "OK")


@pytest.mark.parametrize("codec,charset,facility", [
    ("gbk", "GBK", "北京東城医院"), ("gb18030", "GB 18030-2000", "北京東城医院"), ("big5", "BIG-5", "臺大醫院")])
def test_a_two_byte_character_whose_second_byte_is_the_separator_does_not_shift_the_header(codec, charset, facility):
    """東 in GBK and 院 in Big5 end in 0x7C, the field separator: read byte by byte, MSH-18 moved one field and the
    message was refused as not UTF-8, its control id read from MSH-9."""
    assert any(facility.encode(codec)[i + 1:i + 2] == b"|" for i in range(len(facility.encode(codec))))
    data = (f"MSH|^~\\&|LIS|{facility}|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||{charset}\r"
            f"PID|1||M1^^^H1^MR||王^芳||19900307|F\r").encode(codec)
    m = parse(data)
    assert (m.control_id, m.type, m.version, m.get("MSH-4"), m.get("PID-5.1")) == ("C42", "ORU^R01", "2.5.1",
                                                                                  facility, "王")
    assert parse(hl7v2.ack(m)).get("MSA-2") == "C42"


@pytest.mark.parametrize("codec,charset,facility", [
    ("gbk", "GBK", "北京東城医院"), ("big5", "BIG-5", "臺大醫院"), ("utf-8", "UNICODE UTF-8", "Städtisches Klinikum")])
def test_a_message_not_valid_in_its_declared_set_is_refused_naming_it_and_answered_in_it(codec, charset, facility):
    """A byte its set does not have, after a header with a 0x7C second byte (GBK's 東, Big5's 院): refused as not
    valid in the set MSH-18 declares, with its control id — before, 'not valid utf-8 (MSH-18 is empty)', the
    header read byte by byte. The AR echoes the sender's MSH-4 as text of that set (was: its bytes read as
    latin-1, '±±¾©', 'StÃ¤dtisches') and names C42, not MSH-9."""
    data = (f"MSH|^~\\&|LIS|{facility}|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||{charset}\r"
            f"PID|1||M1^^^H1^MR||王^芳||19900307|F\r").encode(codec) + b"OBX|1|ST|X||\xff\xfe\xff\r"
    with pytest.raises(HL7Error) as e:
        parse(data)
    assert e.value.reason.startswith("bytes at offset") and f"not valid {codec} (MSH-18 declares '{charset}')" in \
        e.value.reason and e.value.control_id == "C42" and e.value.field == "MSH-18"
    a = parse(hl7v2.ack(data, "AR", e.value.reason, error_field=e.value.field))
    assert (a.get("MSA-1"), a.get("MSA-2"), a.get("MSH-6"), a.get("MSH-5"), a.charset) == (
        "AR", "C42", facility, "LIS", charset)

def test_the_ack_of_a_header_broken_inside_a_two_byte_character_names_the_message():
    """MSH-4 of a GBK message ends in 東 (0x96 0x7C) then a byte GBK lacks: read a character at a time the header
    is right (C42), but its MSH-4 is no GBK text. The AR names C42 and echoes MSH-4 with U+FFFD for the bad byte,
    not with the 0x7C as a separator (which shifted the ACK's own header: found by fuzzing)."""
    data = (b"MSH|^~\\&|LIS|" + "北京東".encode("gbk") + b"\x80|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||GBK\r"
            b"PID|1||M1\r")
    with pytest.raises(HL7Error) as e:
        parse(data)
    a = parse(hl7v2.ack(data, "AR", e.value.reason))
    assert (a.get("MSA-2"), a.get("MSH-9"), a.get("MSH-5"), a.get("MSH-6")) == ("C42", "ACK^R01^ACK", "LIS",
                                                                               "北京東\ufffd")

@pytest.mark.parametrize("header", [
    "MSH|^~\\&|LIS|H1|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||2.5.1",      # a field too many: MSH-18 no charset
    "MSH|^~\\&|LIS|H1|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||KLINGON",
    "MSH|^~\\&MSH|LIS|H1|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1",             # MSH-2 not encoding characters
    "MSH|^ ~|LIS|H1|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1",
    "MSH|^~\\&|LIS|H1|MEDLAKE|DC|20240305||ORU^R01|C42|P|2.5.1||||||UNICODE UTF-16",  # bytes one at a time: not so
])
def test_the_ack_of_a_message_with_a_bad_header_is_one_the_sender_can_read(header):
    """An AR echoes only the header fields the sender can read back: no unknown character set in MSH-18, no
    invalid encoding characters in MSH-2 (the ACK itself would not parse)."""
    data = (header + "\r" + PID + "\r").encode()
    with pytest.raises(HL7Error) as e:
        parse(data)
    a = parse(hl7v2.ack(data, "AR", e.value.reason, error_field=e.value.field))
    assert (a.get("MSA-1"), a.get("MSA-2"), a.get("MSA-3")) == ("AR", "C42", e.value.reason)
    assert a.charset in ("", None, "UNICODE UTF-8") and a.delims[:5] == ("|", "^", "~", "\\", "&")


def test_python_hl7_agrees_on_the_samples():
    """A second opinion: python-hl7 reads the same MSH-10 and PID-3.1 from every sample."""
    for path in FILES:
        raw = next(split(path.read_bytes())).data
        ours = parse(raw)
        theirs = python_hl7.parse(raw.decode("utf-8").replace("\r\n", "\r").replace("\n", "\r"))
        assert str(theirs.segment("MSH")[10]) == ours.control_id
        assert theirs.extract_field("PID", 1, 3, 1, 1) == ours.get("PID-3.1")
