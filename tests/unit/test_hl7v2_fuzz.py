"""Fuzz: thousands of mutated messages. split/parse/stage may only ever raise HL7Error; ack never raises and
writes an ACK that parses."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake.sources import hl7v2
from medlake.sources.hl7v2 import HL7Error

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "hl7"
SEEDS = [raw.data for p in sorted(SAMPLES.glob("*.hl7")) for raw in hl7v2.split(p.read_bytes())] + [
    "MSH|^~\\&|LIS|H1|||20240305||ORU^R01|C1|P|2.5.1||||||GB 18030-2000\rPID|1||M1^^^H1^MR||王^芳||19900307|F\r"
    "OBR|1|P|F|GLU^Glucose\rOBX|1|NM|GLU^Glucose||5.6|mmol/L|3.9-6.1|N|||F|||20240305\r".encode("gb18030"),
]
# bytes that matter to an HL7 parser: delimiters, escapes, segment ends, MLLP framing, non-ASCII
SPECIAL = [b"|", b"^", b"~", b"\\", b"&", b"#", b"\r", b"\n", b"\r\n", b"\x0b", b"\x1c", b"\x00", b"\xef\xbb\xbf",
           b"\xff\xfe", b"\\X", b"\\X4\\", b"\\.br\\", b"\\C2842\\", b"\\Z", b'""', b"MSH", b"PID|", b"OBX|1|NM|",
           b"\xe4\xb8", b"\xc3", b"\xa0", b"99999999", b"2024-13-45", b"-", b".", b"e9", b"<", b"1e400"]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data)))
        if op == 0:
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif op == 1:
            del data[at:at + draw(st.integers(1, 40))]
        elif op == 2:
            data[at:at + 1] = draw(st.binary(min_size=1, max_size=4))
        elif op == 3:
            data = data[:at]                                       # truncated
        elif op == 4:                                             # a segment repeated or moved
            segs = bytes(data).split(b"\r") if b"\r" in data else bytes(data).split(b"\n")
            i, j = draw(st.integers(0, len(segs) - 1)), draw(st.integers(0, len(segs)))
            segs.insert(j, segs[i])
            data = bytearray(b"\r".join(segs))
        else:                                                     # a field replaced by something odd
            segs = bytes(data).split(b"\r") if b"\r" in data else bytes(data).split(b"\n")
            i = draw(st.integers(0, len(segs) - 1))
            fields = segs[i].split(b"|")
            k = draw(st.integers(0, len(fields) - 1))
            fields[k] = draw(st.sampled_from(SPECIAL + [b"", b"GB 18030", b"KLINGON", b"UNICODE UTF-16", b"8859/5"]))
            segs[i] = b"|".join(fields)
            data = bytearray(b"\r".join(segs))
    return bytes(data)


def readable(ack: bytes, code: str) -> None:
    """An ACK the sender can read: it parses, says its code, and holds no MLLP framing byte."""
    assert b"\x0b" not in ack and b"\x1c" not in ack
    assert hl7v2.parse(ack).get("MSA-1") == code


def run(data: bytes) -> None:
    for raw in hl7v2.split(data):
        readable(hl7v2.ack(raw.data, "AR", "fuzz"), "AR")
        try:
            m = hl7v2.parse(raw.data)
            rows = hl7v2.stage(m)
            readable(hl7v2.ack(m, "AA"), "AA")
            for path in ("PID-3.1", "MSH-9.2", "OBX[2]-5(2).1.1"):
                m.get(path)
        except HL7Error as e:
            assert e.reason and str(e)
            continue
        for table, rs in rows.items():
            assert set().union(*rs) <= set(hl7v2.STAGING_SCHEMAS[table].names)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated())
def test_mutated_messages_only_ever_raise_hl7error(data):
    run(data)


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(max_size=300).map(lambda b: b"MSH|^~\\&|" + b))
def test_random_bytes_after_an_msh_header(data):
    run(data)
