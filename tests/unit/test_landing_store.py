import sqlite3

import pytest

from medlake.landing import Item, Landing
from medlake.landing import store as landing_store


def test_same_content_twice_is_counted_not_stored_twice(tmp_path):
    land = Landing(tmp_path)
    a = land.put(b"MSH|^~\\&|A", "h1-his", "a.hl7", "b1")
    b = land.put(b"MSH|^~\\&|A", "h1-his", "a-again.hl7", "b2")
    c = land.put(b"MSH|^~\\&|A", "h2-his", "a.hl7", "b2")  # another source: new for that source
    assert (a.duplicate, b.duplicate, c.duplicate) == (False, True, False)
    assert a.sha256 == b.sha256 == c.sha256
    assert land.counts() == {"received": 3, "landed": 2, "duplicates": 1}
    assert land.counts("h1-his") == {"received": 2, "landed": 1, "duplicates": 1}
    assert [r.original_name for r in land.receipts("h1-his")] == ["a.hl7"]
    assert land.db.execute("SELECT count(*) FROM object").fetchone()[0] == 1
    assert land.get(a.sha256) == b"MSH|^~\\&|A"


def test_group_commit_and_reopen(tmp_path):
    land = Landing(tmp_path)
    rs = land.put_many([Item(f"m{i}".encode(), "s") for i in range(100)])
    assert [r.seq for r in rs] == list(range(1, 101))
    land.close()
    again = Landing(tmp_path)
    assert again.counts("s")["landed"] == 100
    assert again.get(rs[42].sha256) == b"m42"


def test_landing_is_append_only(tmp_path):
    land = Landing(tmp_path)
    land.put(b"x", "s")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        land.db.execute("UPDATE receipt SET source = 'other'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        land.db.execute("DELETE FROM object")


def test_large_files_are_streamed_to_objects(tmp_path, monkeypatch):
    monkeypatch.setattr(landing_store, "INLINE_LIMIT", 1000)
    big = tmp_path / "Observation.ndjson"
    big.write_bytes(b'{"resourceType":"Observation"}\n' * 500)
    land = Landing(tmp_path / "landing")
    r = land.put_file(big, "h2-emr", batch="b1")
    assert r.size == big.stat().st_size and not r.duplicate
    assert (tmp_path / "landing" / "objects" / r.sha256[:2] / r.sha256).read_bytes() == big.read_bytes()
    assert land.put_file(big, "h2-emr").duplicate
    with land.open(r.sha256) as f:
        assert f.read() == big.read_bytes()


def test_a_group_with_repeats_lands_each_content_once_per_source(tmp_path):
    land = Landing(tmp_path)
    land.put(b"old", "s")
    rs = land.put_many([Item(b"new", "s"), Item(b"new", "s"), Item(b"old", "s"), Item(b"new", "t")])
    assert [r.duplicate for r in rs] == [False, True, True, False]
    assert [r.seq for r in rs] == [2, 3, 4, 5]
    assert [(r.seq, r.duplicate) for r in land.receipts(include_duplicates=True)] == [
        (1, False), (2, False), (3, True), (4, True), (5, False)]
