"""kill -9 the MLLP listener in the middle of a 10,000-message stream from several senders, restart it, resend
what was not acknowledged: every ACKed message is in landing exactly once, and every message at least once."""
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

from medlake.landing import Landing
from medlake.sources import mllp

SENDERS, PER_SENDER = 5, 2000


def message(k: int, i: int) -> bytes:
    cid = f"K{k}-{i:05d}"
    return (f"MSH|^~\\&|LIS|H1|MEDLAKE|DC|20240305101500||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
            f"PID|1||MRN{i % 97}^^^H1^MR||Wang^Fang||19900307|F\r"
            f"OBR|1|P{cid}|F{cid}|GLU^Glucose^L\r"
            f"OBX|1|NM|GLU^Glucose^L||{5 + i % 30 / 10}|mmol/L|3.9-6.1|N|||F|||20240305\r").encode()


def start(landing, port=0):
    p = subprocess.Popen([sys.executable, "-m", "medlake.cli", "listen", "--port", str(port), "--source", "h1-lis",
                          "--landing", str(landing)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + p.stderr.read()
    return p, int(line.split()[2].rsplit(":", 1)[1])


def test_kill_9_mid_stream_then_resend_what_was_not_acknowledged(tmp_path):
    root = tmp_path / "landing"
    msgs = {k: [message(k, i) for i in range(PER_SENDER)] for k in range(SENDERS)}
    acked = {k: [] for k in range(SENDERS)}
    total = [0]
    lock = threading.Lock()
    proc, port = start(root)

    def count(i, ack):
        with lock:
            total[0] += 1

    def sender(k):
        try:
            acked[k] = mllp.send("127.0.0.1", port, msgs[k], window=4, timeout=20, on_ack=count)
        except mllp.MLLPError as e:
            acked[k] = e.acks

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
    [t.start() for t in threads]
    deadline = time.time() + 40
    while total[0] < 3000 and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)                 # kill -9: no chance to clean up
    proc.wait(10)
    [t.join(30) for t in threads]
    first = sum(len(a) for a in acked.values())
    assert 0 < first < SENDERS * PER_SENDER, "the kill must land in the middle of the stream"
    assert all(mllp.ack_code(a) == "AA" for k in acked for a in acked[k])
    for k in acked:   # ACKs come back in order: each is for the message at the same position
        assert [a.split(b"\rMSA|AA|")[1].split(b"|")[0].rstrip(b"\r") for a in acked[k][:3]] == \
            [f"K{k}-{i:05d}".encode() for i in range(min(3, len(acked[k])))]

    proc, port2 = start(root, port)                  # restart on the same port
    resent = {}
    try:
        def resender(k):
            resent[k] = mllp.send("127.0.0.1", port2, msgs[k][len(acked[k]):], window=4, timeout=20)

        threads = [threading.Thread(target=resender, args=(k,)) for k in range(SENDERS)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.startswith("stopped; received")
    assert all(len(resent[k]) == PER_SENDER - len(acked[k]) for k in range(SENDERS))
    assert all(mllp.ack_code(a) == "AA" for k in resent for a in resent[k])

    land = Landing(root)
    assert land.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    new = {}
    for r in land.receipts("h1-lis"):                # first landings only (duplicates are counted apart)
        new[r.sha256] = new.get(r.sha256, 0) + 1
    for k in range(SENDERS):
        for i, m in enumerate(msgs[k]):
            digest = hashlib.sha256(m).hexdigest()
            assert new.get(digest) == 1, f"message K{k}-{i} landed {new.get(digest, 0)} times"
            if i < len(acked[k]):
                assert land.get(digest) == m         # ACKed before the kill: survived it byte for byte
    counts = land.counts("h1-lis")
    assert counts["landed"] == SENDERS * PER_SENDER
    # in flight at the kill (landed, ACK lost) and resent: duplicates, never a second copy
    assert counts["duplicates"] == counts["received"] - counts["landed"] >= 0
    assert os.path.exists(root / "landing.sqlite")
