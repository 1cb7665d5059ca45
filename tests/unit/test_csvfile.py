import datetime as dt
import io

from medlake.sources import csvfile
from medlake.sources.config import Source
from medlake.sources.records import Rejected, Staged, is_identifying

SRC = Source(name="h2-pharmacy", kind="csv", system="pharmacy", encoding="gbk",
             columns={"record_id": "发药单号", "patient_id": "病人ID", "drug_code": "药品编码", "drug_name": "药品名称",
                      "quantity": "数量", "days_supply": "天数", "dispensed_at": "发药时间"},
             formats={"dispensed_at": "%Y/%m/%d %H:%M"}, code_systems={"drug_code": "urn:medlake:h2:pharmacy"})
HEADER = "发药单号,病人ID,药品编码,药品名称,数量,天数,发药时间,备注\n"


def read(data: bytes, src=SRC):
    return list(csvfile.read(io.BytesIO(data), "2024-03.csv", src))


def test_gbk_rows_are_staged_and_bad_rows_rejected_with_line_numbers():
    lines = [
        HEADER.encode("gbk"),                                                      # line 1
        "R1,MRN-1,D001,阿莫西林胶囊,2,7,2024/03/01 08:30,\n".encode("gbk"),          # 2
        '"R2",MRN-2,D002,"布洛芬,缓释",1,,2024/03/02 09:00,"两行\n备注"\n'.encode("gbk"),  # 3-4
        "R3,MRN-3,D003,".encode("gbk") + "头孢".encode("utf-8") + ",1,1,2024/03/03 10:00,\n".encode("gbk"),  # 5
        "R4,MRN-4,,维生素C,1,1,2024/03/04 10:00,\n".encode("gbk"),                 # 6: no drug code
        "R5,MRN-5,D005,维生素C,1,1,2024-03-05,\n".encode("gbk"),                   # 7: wrong date format
        "R6,MRN-6,D006,维生素C,x,1,2024/03/06 10:00,\n".encode("gbk"),             # 8: quantity not a number
        "\n".encode("gbk"),                                                        # 9: blank
        "R7,MRN-7,D007,维生素C,1,1,2024/03/07 10:00,\n".encode("gbk"),             # 10
        "R8,MRN-8,D008,维生".encode("gbk"),                                        # 11: truncated
    ]
    recs = read(b"".join(lines))
    staged = [r for r in recs if isinstance(r, Staged)]
    assert [(r.loc.line, r.loc.message_id) for r in staged] == [(2, "R1"), (3, "R2"), (10, "R7")]
    row1 = staged[0].rows["stg_csv_pharmacy"][0]
    assert row1 == {"record_id": "R1", "patient_id": "MRN-1", "drug_code": "D001", "drug_name": "阿莫西林胶囊",
                    "quantity": 2.0, "days_supply": 7, "dispensed_at": dt.datetime(2024, 3, 1, 8, 30),
                    "drug_code_system": "urn:medlake:h2:pharmacy", "line": 2}
    assert staged[1].rows["stg_csv_pharmacy"][0]["drug_name"] == "布洛芬,缓释"
    assert staged[1].rows["stg_csv_pharmacy"][0]["days_supply"] is None
    rejected = [(r.loc.line, r.loc.message_id, r.reason, r.loc.field) for r in recs if isinstance(r, Rejected)]
    assert rejected == [
        (5, "R3", "wrong_encoding", None),
        (6, "R4", "missing_mandatory", "药品编码"),
        (7, "R5", "invalid", "发药时间"),
        (8, "R6", "invalid", "数量"),
        (11, "R8", "truncated", None),
    ]
    bad = next(r for r in recs if isinstance(r, Rejected) and r.loc.line == 5)
    assert bad.raw == lines[3]
    assert "not valid gbk" in bad.detail


def test_a_mapped_column_missing_from_the_header_rejects_the_file():
    (r,) = read("单号,病人ID\nR1,MRN-1\n".encode("gbk"))
    assert (r.reason, r.loc.line, r.loc.key()) == ("missing_column", 1, "file")
    assert "发药单号" in r.detail


def test_utf8_bom_and_identifying_patient_id():
    src = Source(name="p", kind="csv", system="pharmacy", columns={"record_id": "id", "patient_id": "mrn",
                                                                   "drug_code": "code", "dispensed_at": "at"})
    (r,) = read(b"\xef\xbb\xbfid,mrn,code,at\nA,M,C,2024-01-02T03:04:00\n", src)
    assert r.rows["stg_csv_pharmacy"][0]["dispensed_at"] == dt.datetime(2024, 1, 2, 3, 4)
    schema = csvfile.STAGING_SCHEMAS["stg_csv_pharmacy"]
    assert is_identifying(schema.field("patient_id")) and not is_identifying(schema.field("drug_code"))


def test_a_stray_carriage_return_rejects_its_line_and_the_file_goes_on():
    data = (HEADER + "R1,MRN-1,D001,维生素C,1,1,2024/03/01 08:30,\n"
            "R2,MRN-2,D002,维生\r素C,1,1,2024/03/02 08:30,\n"       # a CR inside a field not quoted
            "R3,MRN-3,D003,维生素C,1,1,2024/03/03 08:30,\n").encode("gbk")
    recs = read(data)
    assert [(type(r), r.loc.line) for r in recs] == [(Staged, 2), (Rejected, 3), (Staged, 4)]
    assert recs[1].reason == "malformed" and "carriage return" in recs[1].detail
    assert recs[1].raw == "R2,MRN-2,D002,维生\r素C,1,1,2024/03/02 08:30,\n".encode("gbk")
    (r,) = read(("发药单号,病人ID,药品\r编码\n" + "R1,MRN-1,D001\n").encode("gbk"))
    assert (r.reason, r.loc.key()) == ("malformed", "file") and r.detail.startswith("the header:")


def test_numbers_python_reads_but_no_export_means_are_refused():
    def row(qty, days):
        (r,) = read((HEADER + f"R1,MRN-1,D001,维生素C,{qty},{days},2024/03/01 08:30,\n").encode("gbk"))
        return r.rows["stg_csv_pharmacy"][0] if isinstance(r, Staged) else r.loc.field
    assert [row(q, 7) for q in ("nan", "inf", "-Infinity", "1e400", "1_000")] == ["数量"] * 5
    assert [row(1, d) for d in ("7.5", "7e0", "0x1F")] == ["天数"] * 3
    assert [(r["quantity"], r["days_supply"]) for r in (row("2.5", "30.0"), row("-.5e1", "+7"), row("１２", "３"))] == \
        [(2.5, 30), (-5.0, 7), (12.0, 3)]  # 30.0: pandas' whole number in a column with gaps; full-width digits


def test_a_whole_number_beyond_64_bits_is_refused_at_its_column():
    (r, ok) = read((HEADER + "R1,MRN-1,D001,维生素C,1,99999999999999999999,2024/03/01 08:30,\n"
                    "R2,MRN-1,D001,维生素C,1,9223372036854775807,2024/03/01 08:30,\n").encode("gbk"))
    assert (r.reason, r.loc.field, r.loc.line) == ("invalid", "天数", 2)
    assert "is not a whole number a 64-bit integer holds" in r.detail
    assert ok.rows["stg_csv_pharmacy"][0]["days_supply"] == 2**63 - 1
