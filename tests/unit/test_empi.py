"""EMPI on a small hand-made set: the expected persons are spelled out; decisions, A40 merges, unmerge, stable ids."""
from __future__ import annotations

import base64
import os

import pytest

from medlake.identity import empi, keys
from medlake.identity.vault import Vault

# A resident ID number with a valid check digit, and a one-digit typo of it (check digit then fails).
ID_LI = "110101199211200028"
ID_LI_TYPO = "110101199211290028"
ID_ZHANG = "110101198003050016"

IDENTITIES = [
    # person "zhang wei 1980": characters, a homophone typo (玮), pinyin in latin letters with day/month swapped
    dict(source="h1-his", source_id="A1", family="张", given="伟", birth_date="1980-03-05", sex="M",
         id_number=ID_ZHANG, phone="13800000001", address="北京市东城区建国路1号"),
    dict(source="h1-lis", source_id="L1", family="张", given="玮", birth_date="1980-03-05", sex="M"),
    dict(source="h2-emr", source_id="E1", family="Zhang", given="Wei", birth_date="1980-05-03", sex="male",
         phone="+86 138-0000-0001"),
    # person "li fang 1992": the second registration has a one-digit ID typo
    dict(source="h1-his", source_id="A2", family="李", given="芳", birth_date="1992-11-20", sex="F", id_number=ID_LI),
    dict(source="h2-his", source_id="B2", full_name="李芳", birth_date="19921120", sex="F", id_number=ID_LI_TYPO),
    # person "john smith": family and given swapped in the second system
    dict(source="h1-his", source_id="A3", family="Smith", given="John", birth_date="1975-07-14", sex="M",
         phone="+1-555-201-3344"),
    dict(source="h2-emr", source_id="E3", family="John", given="Smith", birth_date="1975-07-14", sex="M",
         phone="+1-555-201-3344"),
    # same names, other people
    dict(source="h1-his", source_id="A4", family="张", given="伟", birth_date="1965-01-02", sex="M",
         id_number="110105196501020035"),
    dict(source="h2-his", source_id="B6", family="李", given="芳", birth_date="1970-02-02", sex="F",
         id_number="310104197002020044"),
    dict(source="h1-his", source_id="A5", family="王", given="芳", birth_date="1980-03-05", sex="F"),
]
EXPECTED = [{"h1-his:A1", "h1-lis:L1", "h2-emr:E1"}, {"h1-his:A2", "h2-his:B2"}, {"h1-his:A3", "h2-emr:E3"},
            {"h1-his:A4"}, {"h2-his:B6"}, {"h1-his:A5"}]


@pytest.fixture
def ring():
    return keys.KeyRing([base64.b64decode(keys.new_key())], origin="test")


@pytest.fixture
def vault(tmp_path, ring):
    v = Vault(tmp_path / "identity" / "vault.sqlite", ring)
    v.put(IDENTITIES)
    yield v
    v.close()


def clusters(engine) -> list[set[str]]:
    by: dict[int, set[str]] = {}
    for r in engine.query("SELECT * FROM empi_person_map").to_pylist():
        by.setdefault(r["person_id"], set()).add(f"{r['source']}:{r['source_id']}")
    return sorted(by.values(), key=lambda s: min(s))


def test_hand_made_set_links_to_the_expected_persons(duck, vault):
    rep = empi.run(duck, vault, who="test")
    assert rep.identities == 10 and not rep.trained
    assert clusters(duck) == sorted(EXPECTED, key=lambda s: min(s))
    assert rep.persons == 6
    # the transform's lookup
    assert empi.person_id_for(duck, "h1-lis", "L1") == empi.person_id_for(duck, "h2-emr", "E1")
    assert empi.person_id_for(duck, "h1-his", "A4") != empi.person_id_for(duck, "h1-his", "A1")
    assert empi.person_id_for(duck, "h9", "nope") is None
    # the run read plaintext once, and said so
    log = vault.access_log()
    assert [(r["who"], r["why"], r["rows"]) for r in log] == [("test", "empi run", 10)]


def test_rerun_changes_nothing_and_new_identity_joins_its_person(duck, vault):
    empi.run(duck, vault, who="test")
    before = {(r["source"], r["source_id"]): r["person_id"] for r in duck.read_arrow("empi_person_map").to_pylist()}
    assert empi.run(duck, vault, who="test").changed == 0
    vault.put([dict(source="h3-his", source_id="C2", family="李", given="芳", birth_date="1992-11-20", sex="F",
                    id_number=ID_LI)])
    rep = empi.run(duck, vault, who="test")
    after = {(r["source"], r["source_id"]): r["person_id"] for r in duck.read_arrow("empi_person_map").to_pylist()}
    assert rep.changed == 1
    assert after[("h3-his", "C2")] == before[("h1-his", "A2")]
    assert {k: v for k, v in after.items() if k in before} == before
    hist = duck.query("SELECT * FROM empi_person_history WHERE source = 'h3-his'").to_pylist()
    assert hist[0]["old_person_id"] is None and hist[0]["new_person_id"] == before[("h1-his", "A2")]


def test_borderline_pair_goes_to_review_and_accept_reject_decide(duck, vault):
    vault.put([dict(source="h1-his", source_id="R1", family="陈", given="静", birth_date="1990-01-01", sex="F"),
               dict(source="h2-his", source_id="R2", family="陈", given="静", birth_date="1990-01-07", sex="F")])
    empi.run(duck, vault, who="test")
    queue = empi.review_queue(duck)
    assert [(q["source_l"], q["id_l"], q["source_r"], q["id_r"]) for q in queue] == [("h1-his", "R1", "h2-his", "R2")]
    assert 0.5 <= queue[0]["match_probability"] < 0.95
    r1, r2 = ("h1-his", "R1"), ("h2-his", "R2")
    assert empi.person_id_for(duck, *r1) != empi.person_id_for(duck, *r2)
    assert empi.decide(duck, "accept", r1, r2, who="alice", reason="same phone on paper chart") == 1
    assert empi.person_id_for(duck, *r1) == empi.person_id_for(duck, *r2)
    assert empi.review_queue(duck) == []
    empi.decide(duck, "reject", r1, r2, who="bob", reason="different mothers")
    assert empi.person_id_for(duck, *r1) != empi.person_id_for(duck, *r2)
    # a new run keeps the decision; the history keeps both decisions
    empi.run(duck, vault, who="test")
    assert empi.person_id_for(duck, *r1) != empi.person_id_for(duck, *r2)
    assert [r["kind"] for r in duck.query("SELECT kind FROM empi_decision ORDER BY seq").to_pylist()] == ["accept", "reject"]


def test_a40_merge_then_unmerge(duck, vault):
    vault.put([dict(source="h1-his", source_id="M1", family="赵", given="强", birth_date="1970-04-04", sex="M"),
               dict(source="h1-his", source_id="M2", family="赵", given="刚", birth_date="1971-09-09", sex="M")])
    empi.run(duck, vault, who="test")
    m1, m2 = ("h1-his", "M1"), ("h1-his", "M2")
    p1, p2 = empi.person_id_for(duck, *m1), empi.person_id_for(duck, *m2)
    assert p1 != p2
    merges = [dict(prior_source="h1-his", prior_id="M2", source="h1-his", source_id="M1")]
    assert empi.record_merges(duck, merges) == 1
    assert empi.record_merges(duck, merges) == 0  # idempotent
    empi.recluster(duck, "test", "merges")
    assert empi.person_id_for(duck, *m1) == empi.person_id_for(duck, *m2) == min(p1, p2)
    # the merge survives a new run
    empi.run(duck, vault, who="test")
    assert empi.person_id_for(duck, *m2) == min(p1, p2)
    empi.unmerge(duck, m2, who="carol", reason="merged in error")
    assert empi.person_id_for(duck, *m1) == min(p1, p2)
    assert empi.person_id_for(duck, *m2) not in (None, p1, p2)  # a fresh id: ids are never reused
    hist = duck.query("SELECT old_person_id, new_person_id, reason FROM empi_person_history "
                      "WHERE source_id = 'M2' ORDER BY run_id").to_pylist()
    assert [h["old_person_id"] for h in hist] == [None, max(p1, p2), min(p1, p2)]
    assert "unmerge h1-his:M2 by carol" in hist[-1]["reason"]
    # and the unmerge survives a new run too, where staging hands the same A40 message in again
    assert empi.record_merges(duck, merges) == 0
    empi.run(duck, vault, who="test")
    assert empi.person_id_for(duck, *m1) != empi.person_id_for(duck, *m2)


def test_unmerge_splits_an_automatic_link(duck, vault):
    empi.run(duck, vault, who="test")
    pid = empi.person_id_for(duck, "h1-his", "A1")
    empi.unmerge(duck, ("h2-emr", "E1"), who="carol")
    assert empi.person_id_for(duck, "h1-his", "A1") == pid == empi.person_id_for(duck, "h1-lis", "L1")
    assert empi.person_id_for(duck, "h2-emr", "E1") != pid


def test_assign_ids_split_and_merge():
    a, b, c, d = ("s", "a"), ("s", "b"), ("s", "c"), ("s", "d")
    old = {a: 5, b: 5, c: 5, d: 7}
    # split {a,b,c} -> {a} and {b,c}: the larger part keeps 5; {a} gets a fresh id above everything ever issued
    assert empi.assign_ids(old, [[a], [b, c], [d]], 9) == {a: 10, b: 5, c: 5, d: 7}
    # merge {a,b,c} with {d}: the smaller id survives
    assert empi.assign_ids(old, [[a, b, c, d]], 9) == {a: 5, b: 5, c: 5, d: 5}


def test_explain_gives_weights_per_comparison(duck, vault):
    empi.run(duck, vault, who="test")
    x = empi.explain(duck, vault, ("h1-his", "A2"), ("h2-his", "B2"), who="test")
    levels = {c["comparison"]: c["level"] for c in x["comparisons"]}
    assert levels["id_number"] == "one character apart, check digit fails (typo)"
    assert levels["name"] == "same characters"
    assert x["same_person"] and x["match_probability"] > 0.95
    assert abs(sum(c["weight"] for c in x["comparisons"]) + x["prior_weight"] - x["match_weight"]) < 1e-6
    y = empi.explain(duck, vault, ("h1-his", "A1"), ("h1-his", "A4"), who="test")
    assert not y["same_person"] and y["match_probability"] < 0.5
    assert {c["comparison"]: c["level"] for c in y["comparisons"]}["birth_date"] == "different"


def test_reject_splits_a_person_even_when_other_links_chain_the_pair(duck, vault):
    """A1, L1 and E1 are linked pairwise (a triangle). Rejecting A1 ~ L1 must split them although A1 ~ E1 ~ L1
    still chains them; accepting the pair later undoes the reject and the person gets its old id back."""
    empi.run(duck, vault, who="test")
    a1, l1, e1 = ("h1-his", "A1"), ("h1-lis", "L1"), ("h2-emr", "E1")
    pid = empi.person_id_for(duck, *a1)
    assert empi.person_id_for(duck, *l1) == empi.person_id_for(duck, *e1) == pid
    links = {(r["id_l"], r["id_r"]) for r in duck.query("SELECT id_l, id_r FROM empi_pair WHERE status = 'link'").to_pylist()}
    assert {("A1", "L1"), ("A1", "E1"), ("L1", "E1")} <= links  # the chain is there

    assert empi.decide(duck, "reject", a1, l1, who="bob", reason="other mother's name") == 1
    # E1 stays with A1 (their link is the strongest); L1's link to E1 is left out: it would rejoin the pair
    assert empi.person_id_for(duck, *a1) == empi.person_id_for(duck, *e1) == pid
    assert empi.person_id_for(duck, *l1) not in (None, pid)
    empi.run(duck, vault, who="test")  # the reject holds over a new run
    assert empi.person_id_for(duck, *l1) != empi.person_id_for(duck, *a1)

    assert empi.decide(duck, "accept", a1, l1, who="alice", reason="same person, checked the ID card") == 1
    assert empi.person_id_for(duck, *l1) == empi.person_id_for(duck, *a1) == pid
    hist = duck.query("SELECT old_person_id, new_person_id, reason FROM empi_person_history WHERE source_id = 'L1' "
                      "ORDER BY run_id").to_pylist()
    assert [(h["old_person_id"], h["new_person_id"]) for h in hist][1:] == [(pid, hist[1]["new_person_id"]),
                                                                            (hist[1]["new_person_id"], pid)]
    assert "reject h1-his:A1 ~ h1-lis:L1 by bob" in hist[1]["reason"] and "accept" in hist[2]["reason"]
    assert [r["kind"] for r in duck.query("SELECT kind FROM empi_decision ORDER BY seq").to_pylist()] == ["reject", "accept"]
    assert empi.status(duck)["decision_conflicts"] == 0
    # two accepts chain L1 ~ A1 ~ E1; a later reject of L1 ~ E1 still splits them, and the accept it overrides
    # (the older one) is reported
    empi.decide(duck, "accept", a1, e1, who="alice")
    empi.decide(duck, "reject", l1, e1, who="bob")
    assert empi.person_id_for(duck, *a1) == empi.person_id_for(duck, *e1) != empi.person_id_for(duck, *l1)
    assert empi.conflicts(duck) == [(a1, l1)] and empi.status(duck)["decision_conflicts"] == 1


def test_cluster_keeps_rejected_pairs_apart_strongest_links_first():
    a, b, c, d = ("s", "a"), ("s", "b"), ("s", "c"), ("s", "d")

    def persons(decisions, links):
        return sorted(sorted(k[1] for k in cl) for cl in empi.cluster([a, b, c, d], decisions, links))

    chain = [(a, c, 0.99), (b, c, 0.97), (c, d, 0.96)]
    assert persons({}, chain) == [["a", "b", "c", "d"]]
    # reject a ~ b: c goes with a (the stronger link), b's link to c is left out, d follows c
    assert persons({(a, b): "reject"}, chain) == [["a", "c", "d"], ["b"]]
    # an accepted pair outranks automatic links: b ~ c accepted, so now a's link to c is the one left out
    assert persons({(a, b): "reject", (b, c): "accept"}, chain) == [["a"], ["b", "c", "d"]]
    # a later reject wins over an earlier accept that chains the pair (the latest accept is joined first)
    assert persons({(b, c): "accept", (a, c): "accept", (a, b): "reject"}, []) == [["a", "c"], ["b"], ["d"]]
    # the latest decision on a pair wins: an accept after the reject links them again
    assert persons({(a, b): "accept"}, chain) == [["a", "b", "c", "d"]]
    # decisions naming an identity that is not in the map do not fail
    assert persons({(a, ("s", "zz")): "reject"}, chain) == [["a", "b", "c", "d"]]
