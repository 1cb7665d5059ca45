"""MLLP listener and sender, in-process on loopback with a real landing store."""
import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from medlake.landing import Item, Landing, ingest
from medlake.sources import hl7v2, mllp


def message(cid: str, kind: str = "ORU^R01", pid3: str = "MRN1^^^H1^MR", facility: str = "H1") -> bytes:
    return (f"MSH|^~\\&|LIS|{facility}|MEDLAKE|DC|20240305101500||{kind}|{cid}|P|2.5.1\r"
            f"PID|1||{pid3}||Wang^Fang||19900307|F\r"
            f"OBR|1|P{cid}|F{cid}|GLU^Glucose^L\r"
            f"OBX|1|NM|GLU^Glucose^L||5.6|mmol/L|3.9-6.1|N|||F|||20240305\r").encode()


class Running:
    """A listener on its own event loop thread, as in `medlake listen`."""

    def __init__(self, listener: mllp.Listener):
        self.li = listener
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.li.start(), self.loop).result(10)
        return self

    def call(self, fn):
        """Run fn() on the loop thread (listener state is only touched there)."""
        return asyncio.run_coroutine_threadsafe(_wrap(fn), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.li.stop(timeout=10), self.loop).result(30)

    def __exit__(self, *exc):
        if not self.li.stopping:
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _wrap(fn):
    return fn()


@pytest.fixture
def land(tmp_path):
    lnd = Landing(tmp_path / "landing")
    yield lnd
    lnd.close()


def listener(land, **kw) -> mllp.Listener:
    kw.setdefault("router", mllp.Router(default="h1-lis"))
    return mllp.Listener(land, Item, port=0, **kw)


def landed(land: Landing, source: str | None = None) -> list[bytes]:
    return [land.get(r.sha256) for r in land.receipts(source, include_duplicates=True)]


def test_every_message_is_landed_before_it_is_answered(land):
    msgs = [message(f"C{i}") for i in range(50)]
    bad = message("C-AE", pid3="")                         # staging fails: AE naming PID-3
    with Running(listener(land)) as run:
        acks = mllp.send("127.0.0.1", run.li.port, msgs + [bad, b"this is not HL7"])
        again = mllp.send("127.0.0.1", run.li.port, msgs[:5], window=5)  # resent after a lost ACK
    parsed = [hl7v2.parse(a) for a in acks]
    assert [a.get("MSA-1") for a in parsed] == ["AA"] * 50 + ["AE", "AR"]
    assert [a.get("MSA-2") for a in parsed[:50]] == [f"C{i}" for i in range(50)]
    assert (parsed[50].get("ERR-2.1"), parsed[50].get("ERR-2.3"), parsed[50].get("ERR-3.1")) == ("PID", "3", "101")
    assert "patient identifier (PID-3) is empty" in parsed[50].get("MSA-3")
    assert "does not start with an MSH" in parsed[51].get("MSA-3")
    assert [mllp.ack_code(a) for a in again] == ["AA"] * 5
    # everything received is in landing, the bad ones too; the resent ones are counted as duplicates
    assert landed(land) == msgs + [bad, b"this is not HL7"] + msgs[:5]
    assert land.counts("h1-lis") == {"received": 57, "landed": 52, "duplicates": 5}
    names = [r.original_name for r in land.receipts("h1-lis")]
    assert names[0].startswith("mllp:127.0.0.1:") and names[0].endswith("/C0")
    s = run.li.stats
    assert (s.received, s.landed, s.duplicates, s.acks) == (57, 52, 5, {"AA": 55, "AE": 1, "AR": 1})


def test_many_concurrent_senders_are_group_committed(land):
    def sender(k, out):
        out[k] = mllp.send("127.0.0.1", run.li.port, [message(f"S{k}-{i}") for i in range(200)], window=8)

    with Running(listener(land, validate=False)) as run:
        out = {}
        threads = [threading.Thread(target=sender, args=(k, out)) for k in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert all(mllp.ack_code(a) == "AA" for k in range(6) for a in out[k])
    assert [hl7v2.parse(a).get("MSA-2") for a in out[3]] == [f"S3-{i}" for i in range(200)]  # in order
    assert land.counts()["landed"] == 1200
    assert run.li.stats.commits < 1200  # several messages per durable commit


def test_bytes_outside_frames_and_unframed_messages_are_landed_and_rejected(land):
    with Running(listener(land)) as run:
        with socket.create_connection(("127.0.0.1", run.li.port), timeout=10) as s:
            s.sendall(b"noise before\r" + mllp.frame(message("F1")))       # junk, then a good frame
            s.sendall(message("F2") + b"\x1c\r")                           # no start block
            s.sendall(mllp.frame(b""))                                     # an empty frame
            buf = b""
            while buf.count(b"\x1c\r") < 3:
                buf += s.recv(65536)
        with socket.create_connection(("127.0.0.1", run.li.port), timeout=10) as s:
            s.sendall(b"\x0bMSH|^~\\&|cut off in the midd")                # the sender goes away mid-frame
        deadline = time.time() + 10
        while run.li.stats.unacknowledged < 2 and time.time() < deadline:
            time.sleep(0.02)
    codes = [mllp.ack_code(f.strip(b"\x0b")) for f in buf.split(b"\x1c\r")[:3]]
    assert codes == ["AA", "AR", "AR"]
    assert "no MLLP start block" in hl7v2.parse(buf.split(b"\x1c\r")[1].strip(b"\x0b")).get("MSA-3")
    assert landed(land) == [b"noise before", message("F1"), message("F2").rstrip(b"\r"),
                            b"\x0bMSH|^~\\&|cut off in the midd"]


def test_a_frame_started_again_is_answered_for_the_whole_one_and_the_part_is_kept(land):
    """A sender that gives up part-way through a frame and sends the message again on the same connection: the
    ACK is the whole message's, its rows are its own (the part's patient does not get them), the part is landed."""
    part = b"\x0b" + message("C1")[:120]                 # cut inside OBR: MSH and PID parse
    whole = message("C2", pid3="MRN2^^^H1^MR")
    with Running(listener(land)) as run:
        with socket.create_connection(("127.0.0.1", run.li.port), timeout=10) as s:
            s.sendall(part)
            s.sendall(mllp.frame(whole))
            buf = b""
            while b"\x1c\r" not in buf:
                buf += s.recv(65536)
        deadline = time.time() + 10
        while run.li.stats.unacknowledged < 1 and time.time() < deadline:
            time.sleep(0.02)
    ack = hl7v2.parse(buf.split(b"\x1c\r")[0].strip(b"\x0b"))
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AA", "C2")
    assert sorted(landed(land)) == sorted([part, whole])
    names = {land.get(r.sha256): r.original_name for r in land.receipts("h1-lis")}
    assert names[part].endswith("/incomplete") and names[whole].endswith("/C2")
    staged = list(ingest.hl7_records(part, names[part]))     # the part, when staged: quarantined, not staged
    assert [(type(r).__name__, r.reason) for r in staged] == [("Rejected", "truncated")]
    assert (run.li.stats.received, run.li.stats.unacknowledged, run.li.stats.acks["AA"]) == (2, 1, 1)


def test_a_frame_over_the_limit_is_landed_as_read_and_answered_after_the_ones_before(land):
    """A message bigger than the limit (a PDF in OBX-5): the frames before it are answered, it gets AR saying how
    to raise the limit, what was read of it is landed, and the connection closes without resetting the ACKs."""
    big = message("C1") + b"OBX|2|ED|PDF^Report^L||^AP^PDF^Base64^" + b"QUJD" * 5000 + b"\r"
    with Running(listener(land, max_frame=5000)) as run:
        with socket.create_connection(("127.0.0.1", run.li.port), timeout=10) as s:
            s.sendall(mllp.frame(message("C0")) + b"\x0b" + big)
            time.sleep(0.3)
            s.sendall(b"\x1c\r" + mllp.frame(message("C2")))   # still sending: read and dropped, no reset
            buf = b""
            while chunk := s.recv(65536):                     # to the end: the listener closes
                buf += chunk
        deadline = time.time() + 10
        while run.li.stats.unacknowledged < 1 and time.time() < deadline:
            time.sleep(0.02)
    acks = [hl7v2.parse(a.strip(b"\x0b")) for a in buf.split(b"\x1c\r") if a]
    assert [(a.get("MSA-1"), a.get("MSA-2")) for a in acks] == [("AA", "C0"), ("AR", "C1")]
    assert "frame larger than 5,000 bytes" in acks[1].get("MSA-3") and "--max-frame" in acks[1].get("MSA-3")
    kept = {r.original_name.rsplit("/", 1)[1]: land.get(r.sha256) for r in land.receipts("h1-lis")}
    assert sorted(kept) == ["C0", "oversized"]
    assert len(kept["oversized"]) > 5000 and (b"\x0b" + big).startswith(kept["oversized"])
    assert [r.reason for r in ingest.hl7_records(kept["oversized"], "oversized")] == ["truncated"]
    assert run.li.stats.acks == {"AA": 1, "AE": 0, "AR": 1}


def test_listen_takes_a_larger_limit(tmp_path):
    """`medlake listen --max-frame MB`: a 1.5 MB message is refused under 1 MB and accepted under 2 MB."""
    big = message("C1") + b"OBX|2|ED|PDF^Report^L||^AP^PDF^Base64^" + b"QUJD" * 400_000 + b"\r"
    codes = []
    for mb in ("1", "2"):
        p = subprocess.Popen([sys.executable, "-m", "medlake.cli", "listen", "--port", "0", "--source", "h1-lis",
                              "--landing", str(tmp_path / mb), "--max-frame", mb],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stderr.readline()
            port = int(line.split()[2].rsplit(":", 1)[1])
            codes.append(mllp.ack_code(mllp.send("127.0.0.1", port, [big])[0]))
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
    assert codes == ["AR", "AA"]


def test_a_reader_bug_on_one_message_is_answered_and_the_feed_goes_on(land, monkeypatch):
    """A bug in the reader (an exception that is no HL7Error) on one message: it is landed and answered (AE when
    staging it fails, AR when parsing it does), the connection goes on. It closed the connection and the message
    was not landed: the sender sent it again and again (a poison message stopping the feed)."""
    parse, stage = hl7v2.parse, hl7v2.stage

    def bug(fn, cid):
        def call(m):
            if (m.startswith(b"MSH|") and f"|{cid}|P|".encode() in m) if isinstance(m, bytes) else m.control_id == cid:
                raise KeyError("a reader bug")
            return fn(m)
        return call

    monkeypatch.setattr(hl7v2, "stage", bug(stage, "C1"))
    monkeypatch.setattr(hl7v2, "parse", bug(parse, "C2"))
    msgs = [message(f"C{i}") for i in range(4)]
    with Running(listener(land)) as run:
        acks = mllp.send("127.0.0.1", run.li.port, msgs, timeout=10)
    assert [mllp.ack_code(a) for a in acks] == ["AA", "AE", "AR", "AA"]
    assert "reader failed on this message (KeyError: 'a reader bug'); it is landed" in acks[1].decode()
    assert landed(land) == msgs


def test_a_frame_holding_a_batch_is_answered_by_a_batch_of_acks(land):
    """An HL7 batch (FHS/BHS … BTS/FTS) is answered as HL7 v2 says (§2.10.3): a batch holding one ACK per message,
    AE for the one that fails staging (with its field), its BHS-12 the batch's BHS-11. Messages one after another
    in a frame, without a batch header, get one ACK: AE naming the first that is not good. Both are landed as
    received and staged as their messages."""
    batch = (b"FHS|^~\\&\rBHS|^~\\&|LIS|H1|MEDLAKE|DC|||||B7\r" + message("C0") + message("C1", pid3="")
             + message("C2") + b"BTS|3\rFTS|1\r")
    two = message("D1") + message("D2", pid3="")
    with Running(listener(land)) as run:
        acks = mllp.send("127.0.0.1", run.li.port, [batch, two], timeout=10)
    segments = acks[0].split(b"\r")
    assert [x[:3] for x in segments if x] == [b"FHS", b"BHS", b"MSH", b"MSA", b"MSH", b"MSA", b"ERR", b"MSH", b"MSA",
                                              b"BTS", b"FTS"]
    bhs = segments[1].decode().split("|")
    assert bhs[2:6] == ["MEDLAKE", "DC", "LIS", "H1"] and bhs[11] == "B7" and segments[-3:] == [b"BTS|3", b"FTS|1", b""]
    each = [hl7v2.parse(r.data) for r in hl7v2.split(acks[0])]
    assert [(m.get("MSA-1"), m.get("MSA-2")) for m in each] == [("AA", "C0"), ("AE", "C1"), ("AA", "C2")]
    assert "PID-3" in each[1].get("MSA-3") and not each[1].get("MSA-3").startswith("message")
    assert mllp.ack_code(acks[0]) == "AE"  # the worst of the batch
    b = hl7v2.parse(acks[1])
    assert (b.get("MSA-1"), b.get("MSA-2")) == ("AE", "D1")
    assert b.get("MSA-3").startswith("message 2 of the frame's 2 (D2): ") and "PID-3" in b.get("MSA-3")
    assert landed(land) == [batch, two]
    assert [r.original_name.rsplit("/", 1)[1] for r in land.receipts("h1-lis")] == ["C0+2", "D1+1"]
    staged = list(ingest.hl7_records(batch, "batch"))
    assert [r.loc.message_id for r in staged] == ["C0", "C1", "C2"]
    assert [hasattr(r, "reason") for r in staged] == [False, True, False]  # C1 quarantined at ingest, as answered


def test_a_batch_message_that_does_not_parse_is_answered_ar_in_its_place(land):
    """One message of a batch does not parse (its MSH-2 is no encoding characters): it gets AR in its place in the
    batch of ACKs, the others AA — not one AR for the whole batch, whose good messages are staged all the same. A
    batch of one message is answered by a batch too; a batch of nothing that parses, by one AR."""
    broken = message("C1").replace(b"MSH|^~\\&|", b"MSH|^ ~|", 1)
    batch = b"BHS|^~\\&|LIS|H1|MEDLAKE|DC|||||B8\r" + message("C0") + broken + message("C2") + b"BTS|3\r"
    one = b"BHS|^~\\&|LIS|H1|MEDLAKE|DC|||||B9\r" + message("C3") + b"BTS|1\r"
    none = b"BHS|^~\\&|LIS|H1|MEDLAKE|DC|||||B0\r" + broken + b"BTS|1\r"
    with Running(listener(land)) as run:
        acks = mllp.send("127.0.0.1", run.li.port, [batch, one, none], timeout=10)
    each = [hl7v2.parse(r.data) for r in hl7v2.split(acks[0])]
    assert [(m.get("MSA-1"), m.get("MSA-2")) for m in each] == [("AA", "C0"), ("AR", "C1"), ("AA", "C2")]
    assert "MSH-2" in each[1].get("MSA-3") and acks[0].split(b"\r")[-2] == b"BTS|3"
    assert mllp.ack_code(acks[0]) == "AR" and run.li.stats.acks == {"AA": 1, "AE": 0, "AR": 2}
    assert acks[1].startswith(b"BHS|") and [hl7v2.parse(r.data).get("MSA-2") for r in hl7v2.split(acks[1])] == ["C3"]
    assert mllp.ack_code(acks[2]) == "AR" and not acks[2].startswith(b"BHS")
    assert landed(land) == [batch, one, none]
    staged = list(ingest.hl7_records(batch, "batch"))
    assert [hasattr(r, "reason") for r in staged] == [False, True, False]


def test_routes_by_header(land, tmp_path):
    """Each message goes to the source its header routes it to; one no route takes is landed as `unrouted` and
    answered AR naming its header — a batch with no route by a batch of ARs, one per message (§2.10.3)."""
    rules = tmp_path / "routes.toml"
    rules.write_text('[[route]]\nsource = "h1-his"\nmessage_type = "ADT^*"\n\n'
                     '[[route]]\nsource = "h2-lis"\nsending_facility = "H2"\n', encoding="utf-8")
    routes, default = mllp.load_routes(rules)
    assert default is None and routes[0] == mllp.Route("h1-his", message_type="ADT^*")
    batch = (b"BHS|^~\\&|LIS|H9|MEDLAKE|DC|||||B5\r" + message("X4", facility="H9") + message("X5", facility="H9")
             + b"BTS|2\r")
    with Running(listener(land, router=mllp.Router(routes))) as run:
        acks = mllp.send("127.0.0.1", run.li.port, [message("A1", "ADT^A01"), message("L2", facility="H2"),
                                                    message("X3", facility="H9"), b"garbage", batch])
        assert run.li.stats.acks == {"AA": 2, "AE": 0, "AR": 3}
    assert [mllp.ack_code(a) for a in acks] == ["AA", "AA", "AR", "AR", "AR"]
    assert "no route for MSH-3 'LIS', MSH-4 'H9', MSH-9 'ORU^R01'" in hl7v2.parse(acks[2]).get("MSA-3")
    each = [hl7v2.parse(r.data) for r in hl7v2.split(acks[4])]
    assert acks[4].startswith(b"BHS|") and acks[4].split(b"\r")[-2] == b"BTS|2"
    assert [(m.get("MSA-1"), m.get("MSA-2")) for m in each] == [("AR", "X4"), ("AR", "X5")]
    assert all("no route for MSH-3 'LIS', MSH-4 'H9'" in m.get("MSA-3") for m in each)
    assert landed(land, "h1-his") == [message("A1", "ADT^A01")]
    assert landed(land, "h2-lis") == [message("L2", facility="H2")]
    assert landed(land, "unrouted") == [message("X3", facility="H9"), b"garbage", batch]


@pytest.mark.parametrize("text,error", [
    ('[[route]]\nmessage_type = "ADT*"\n', "route[0].source: missing"),
    ('[[route]]\nsource = "s"\nfacility = "H1"\n', "route[0].facility: unknown key"),
    ('[[route]]\nsource = 3\n', "route[0].source: must be a non-empty string"),
    ("route = [", "not valid TOML"),
    ("", "expected at least one [[route]]"),
])
def test_routing_file_errors_name_file_key_and_reason(tmp_path, text, error):
    f = tmp_path / "routes.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(error)) as e:
        mllp.load_routes(f)
    assert str(e.value).startswith(str(f))
    with pytest.raises(ValueError, match="give a source"):
        mllp.Router([])


class GatedLanding(Landing):
    """The real landing store, whose commits wait for a gate: a slow disk."""

    def __init__(self, root):
        super().__init__(root)
        self.gate = threading.Event()

    def put_many(self, items):
        self.gate.wait(30)
        return super().put_many(items)


def test_backpressure_stops_reading_instead_of_growing_memory(tmp_path):
    land = GatedLanding(tmp_path / "landing")
    li = listener(land, max_queue=20, max_batch=10, window=1000, validate=False)
    msgs = [message(f"B{i}") for i in range(3000)]
    result = {}

    def sender():
        result["acks"] = mllp.send("127.0.0.1", li.port, msgs, window=3000)

    with Running(li) as run:
        t = threading.Thread(target=sender)
        t.start()
        time.sleep(1.0)                       # the disk is stuck: the sender has pushed all it can
        held = run.call(lambda: (li.stats.received, len(li.queue)))
        land.gate.set()
        t.join(60)
    # at most one commit in flight and a full queue are held, not 3000 messages (the rest waits in TCP)
    assert held[1] <= 20 and held[0] <= 10 + 20, held
    assert len(result["acks"]) == 3000 and all(mllp.ack_code(a) == "AA" for a in result["acks"])
    assert land.counts()["landed"] == 3000


def test_graceful_stop_answers_what_was_received_and_refuses_new_connections(tmp_path):
    land = GatedLanding(tmp_path / "landing")
    li = listener(land, validate=False)
    msgs = [message(f"G{i}") for i in range(500)]
    result = {}

    def sender():
        try:
            result["acks"] = mllp.send("127.0.0.1", li.port, msgs, window=50, timeout=20)
        except mllp.MLLPError as e:
            result["acks"] = e.acks

    with Running(li) as run:
        t = threading.Thread(target=sender)
        t.start()
        time.sleep(0.5)
        stopping = threading.Thread(target=run.stop)
        stopping.start()                       # SIGTERM: stop while messages are in flight
        time.sleep(0.3)
        land.gate.set()
        stopping.join(30)
        t.join(30)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", li.port), timeout=2)
    acks = result["acks"]
    assert 0 < len(acks) < 500 and all(mllp.ack_code(a) == "AA" for a in acks)
    got = set(landed(land))
    assert all(m in got for m in msgs[:len(acks)])      # every ACKed message is in landing
    assert li.stats.acks["AA"] == len(acks) == li.stats.landed  # nothing landed went unanswered


def test_sender_reports_the_acks_it_got_before_failing():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]

        def one_ack_then_close():
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(mllp.frame(hl7v2.ack(message("C1"))))
            time.sleep(0.2)
            c.close()

        t = threading.Thread(target=one_ack_then_close)
        t.start()
        with pytest.raises(mllp.MLLPError, match="after 1 ACK") as e:
            mllp.send("127.0.0.1", port, [message("C1"), message("C2")], timeout=5)
        t.join()
    assert len(e.value.acks) == 1 and mllp.ack_code(e.value.acks[0]) == "AA"
