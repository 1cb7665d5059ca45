import sqlite3

import pytest

from medlake.landing.quarantine import Quarantine
from medlake.sources.records import Loc, Rejected


def test_items_are_filed_once_listed_resolved_and_never_deleted(tmp_path):
    q = Quarantine(tmp_path)
    bad = [Rejected(Loc("a.hl7", line=7, offset=120, message_id="MSG7", field="PID-7"), "invalid",
                    "PID-7 '19801345' is not a date", b"MSH|...\rPID|..."),
           Rejected(Loc("a.hl7", line=20, offset=400), "malformed", "no MSH segment", b"garbage")]
    assert q.add_many("h1-his", 3, "ab" * 32, bad) == 2
    assert q.add_many("h1-his", 3, "ab" * 32, bad) == 0  # the same landed object processed again
    items = q.items()
    assert [(i.loc_key, i.reason, i.message_id, i.field) for i in items] == \
        [("line 7 byte 120", "invalid", "MSG7", "PID-7"), ("line 20 byte 400", "malformed", None, None)]
    assert items[0].location == "a.hl7, line 7, byte 120, id MSG7, at PID-7"
    assert items[0].raw == b"MSH|...\rPID|..."
    assert q.counts() == {"invalid": 1, "malformed": 1}
    q.resolve(items[0].id, "retry staged the record")
    assert [i.id for i in q.items()] == [items[1].id]
    done = q.get(items[0].id)
    assert (done.status, done.resolution, done.attempts) == ("resolved", "retry staged the record", 1)
    q.failed_again(items[1].id, "still no MSH")
    assert q.get(items[1].id).last_error == "still no MSH"
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        q.db.execute("DELETE FROM item")
    # failing again after being resolved (e.g. a replay with an older parser) reopens the item, not a new one
    assert q.add_many("h1-his", 3, "ab" * 32, bad[:1]) == 1
    assert q.get(items[0].id).status == "open" and len(q.items(status=None)) == 2
    with pytest.raises(KeyError, match="no quarantine item 99"):
        q.get(99)


def test_a_parquet_row_is_shown_as_a_row():
    """`cdm import` sets a bad Parquet row aside by its row number: the quarantine says row, not line."""
    assert str(Loc("cdm/person.parquet", 3, field="year_of_birth")) == "cdm/person.parquet, row 3, at year_of_birth"
    assert str(Loc("cdm/PERSON.csv", 3)) == "cdm/PERSON.csv, line 3"
