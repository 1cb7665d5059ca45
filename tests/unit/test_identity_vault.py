"""The identity vault: no plaintext at rest, key rotation end to end, the access log, pseudonyms."""
from __future__ import annotations

import base64
import sqlite3

import pytest

from medlake.identity import empi, keys, pseudonym
from medlake.identity.vault import Vault, VaultError

PEOPLE = [
    dict(source="h1-his", source_id=f"MRN{i:04d}", family=fam, given=giv, birth_date=f"19{50 + i}-0{1 + i % 9}-1{i % 10}",
         sex="F" if i % 2 else "M", id_number=idn, phone=f"1390000{i:04d}", address=f"上海市徐汇区漕溪北路{i}号",
         insurance=f"3101{i:08d}")
    for i, (fam, giv, idn) in enumerate([("欧阳", "娜娜", "310104195001100027"), ("诸葛", "孔明", "110101195102110017"),
                                        ("Montgomery", "Beatrice", None), ("司马", "懿", "440106195303130039")])
]
SECRETS = ["欧阳娜娜", "欧阳", "诸葛", "孔明", "Montgomery", "Beatrice", "310104195001100027", "110101195102110017",
           "440106195303130039", "13900000001", "漕溪北路"]


def ring(*ks: str) -> keys.KeyRing:
    return keys.KeyRing([base64.b64decode(k) for k in ks], origin="test")


def raw_bytes(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_plaintext_in_the_vault_or_store_files(tmp_path):
    # control: the same values written plainly to SQLite are found by the same grep
    plain = sqlite3.connect(tmp_path / "control.sqlite")
    plain.execute("CREATE TABLE t (v TEXT)")
    plain.executemany("INSERT INTO t VALUES (?)", [[s] for s in SECRETS])
    plain.commit()
    plain.close()
    control = (tmp_path / "control.sqlite").read_bytes()
    assert all(s.encode() in control for s in SECRETS)

    data = tmp_path / "site"
    with Vault.open(data, ring(keys.new_key())) as v:
        v.put(PEOPLE)
        eng = __import__("medlake.engines", fromlist=["open_engine"]).open_engine(f"duckdb:{data / 'store.duckdb'}")
        empi.run(eng, v, who="test")
        eng.close()
        assert {r["family"] for r in v.read("test", "check")} == {"欧阳", "诸葛", "Montgomery", "司马"}
    blob = raw_bytes(data)
    assert len(blob) > 10_000
    found = [s for s in SECRETS if s.encode() in blob or s.encode("utf-16-le") in blob]
    assert found == []


def test_key_rotation_end_to_end_while_in_use(tmp_path, monkeypatch):
    key_file = tmp_path / "vault.keys"
    old_id = keys.append_key(key_file)
    monkeypatch.setenv("MEDLAKE_VAULT_KEY_FILE", str(key_file))
    path = tmp_path / "identity" / "vault.sqlite"
    with Vault(path) as v:
        v.put(PEOPLE)
        before = v.read("test", "before rotation")
        pseudo = pseudonym.pseudonym(v, "study-a", 42)
    assert Vault(path).key_status() == {old_id: len(PEOPLE) + 2}  # rows + the matching and pseudonym secrets

    new_id = keys.append_key(key_file)  # the new key is active, the old one still readable
    assert (key_file.stat().st_mode & 0o777) == 0o600
    other = Vault(path)  # a second user of the vault during the rotation (another connection)
    seen = []

    def meanwhile(done):
        seen.append(done)
        now = {(r["source"], r["source_id"]): r for r in other.read("reader", "during rotation")}
        assert [now[(r["source"], r["source_id"])] for r in before] == before  # old and new key both readable
        other.put([dict(source="h2-his", source_id=f"NEW{done}", family="新", given="人", birth_date="2000-01-01")])

    with Vault(path) as v:
        moved = v.rotate(batch=2, between=meanwhile)
        assert seen and moved >= len(PEOPLE) + 2
        assert set(v.key_status()) == {new_id}
        assert v.rotate() == 0  # nothing left; running again is harmless
    other.close()

    # drop the old key: everything still reads, values unchanged, pseudonyms stable
    key_file.write_text(key_file.read_text().splitlines()[1] + "\n")
    with Vault(path) as v:
        after = {(r["source"], r["source_id"]): r for r in v.read("test", "after rotation")}
        assert len(after) == len(PEOPLE) + len(seen)  # the rows written during the rotation are there too
        assert [after[(r["source"], r["source_id"])] for r in before] == before
        assert pseudonym.pseudonym(v, "study-a", 42) == pseudo
    # with only the old key, the vault refuses clearly
    key_file.write_text(keys.new_key() + "\n")
    with pytest.raises(keys.VaultKeyError, match="not in .*vault.keys"):
        Vault(path).read("test", "wrong key")


def test_keys_from_the_environment_and_clear_errors(tmp_path):
    k1, k2 = keys.new_key(), keys.new_key()
    r = keys.load({"MEDLAKE_VAULT_KEY": f"{k1},{k2}"})
    assert r.active_id == keys.key_id(base64.b64decode(k2)) and len(r.by_id) == 2
    with pytest.raises(keys.VaultKeyError, match="no vault key"):
        keys.load({})
    with pytest.raises(keys.VaultKeyError, match="32 bytes"):
        keys.load({"MEDLAKE_VAULT_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(keys.VaultKeyError, match="no such file"):
        keys.load({"MEDLAKE_VAULT_KEY_FILE": str(tmp_path / "missing")})


def test_a_tampered_value_does_not_decrypt(tmp_path):
    with Vault(tmp_path / "v.sqlite", ring(keys.new_key())) as v:
        v.put(PEOPLE[:2])
        # move one ciphertext to another row: the associated data (row, field) no longer fits
        blob = v.con.execute("SELECT family FROM identity WHERE source_id = 'MRN0000'").fetchone()[0]
        v.con.execute("UPDATE identity SET family = ? WHERE source_id = 'MRN0001'", [blob])
        with pytest.raises(VaultError, match="does not decrypt"):
            v.read("test", "tamper check")


def test_access_log_is_append_only_and_chained(tmp_path):
    with Vault(tmp_path / "v.sqlite", ring(keys.new_key())) as v:
        v.put(PEOPLE)
        v.read("alice", "review pair 3", [("h1-his", "MRN0001")], fields=["family", "given"])
        v.read("bob", "audit")
        log = v.access_log()
        assert [(r["who"], r["why"], r["rows"]) for r in log] == [("alice", "review pair 3", 1), ("bob", "audit", 4)]
        assert "h1-his:MRN0001" in log[0]["what"] and "family,given" in log[0]["what"]
        assert v.verify_log() == []
        for sql in ("UPDATE access_log SET who = 'mallory'", "DELETE FROM access_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                v.con.execute(sql)
        with pytest.raises(VaultError, match="who and why"):
            v.read("", "")


def test_pseudonyms_differ_per_project_are_stable_and_reidentify_only_for_trustees(tmp_path, duck):
    with Vault(tmp_path / "v.sqlite", ring(keys.new_key())) as v:
        v.put(PEOPLE)
        empi.run(duck, v, who="test")
        pid = empi.person_id_for(duck, "h1-his", "MRN0001")
        a, b = pseudonym.pseudonym(v, "study-a", pid), pseudonym.pseudonym(v, "study-b", pid)
        assert a != b and a == pseudonym.pseudonym(v, "study-a", pid) and len(a) == 24
        assert len(set(pseudonym.pseudonyms(v, "study-a", range(1, 1001)))) == 1000
        with pytest.raises(VaultError, match="may not re-identify"):
            pseudonym.reidentify(v, duck, "study-a", a, who="eve", role="researcher", why="curious")
        got = pseudonym.reidentify(v, duck, "study-a", a, who="tina", role="trustee", why="incidental finding, ethics 7")
        assert got["person_id"] == pid and got["identities"][0]["family"] == "诸葛"
        with pytest.raises(VaultError, match="not a pseudonym"):
            pseudonym.reidentify(v, duck, "study-b", a, who="tina", role="trustee", why="wrong project")
        log = [(r["who"], r["role"], r["granted"]) for r in v.access_log()]
        assert ("eve", "researcher", 0) in log and ("tina", "trustee", 1) in log
    # another vault (another site secret) gives other pseudonyms for the same person
    with Vault(tmp_path / "w.sqlite", ring(keys.new_key())) as w:
        assert pseudonym.pseudonym(w, "study-a", pid) != a


def test_a_vault_made_before_as_of_opens_and_takes_updates(tmp_path):
    """A vault file written before values kept their time (no `as_of` column) gets the column when opened; its
    values count as older than any update that has a time, and keep their place against an update without one."""
    k = ring(keys.new_key())
    with Vault.open(tmp_path, k) as v:
        v.put(PEOPLE[:1])
        v.con.execute("ALTER TABLE identity DROP COLUMN as_of")
    with Vault.open(tmp_path, k) as v:
        v.put([dict(source="h1-his", source_id="MRN0000", phone="13911112222",
                    as_of={"phone": "2001-01-01T00:00:00.000000|00000000000000000001|line 1"}),
               dict(source="h1-his", source_id="MRN0001", family="王", id_type="mrn",
                    as_of={"family": "2001", "id_type": "2001"})])
        v.put([dict(source="h1-his", source_id="MRN0000", phone="13933334444",
                    as_of={"phone": "1999-01-01T00:00:00.000000|00000000000000000009|line 1"}),
               dict(source="h1-his", source_id="MRN0001", family="汪", given="五", id_type="pi",
                    as_of={"family": "2000", "given": "2000", "id_type": "2000"})])  # older: only the given name fills
        got = {r["source_id"]: r for r in v.read("test", "check")}
    assert (got["MRN0000"]["family"], got["MRN0000"]["phone"]) == ("欧阳", "13911112222")
    assert (got["MRN0001"]["family"], got["MRN0001"]["given"], got["MRN0001"]["id_type"]) == ("王", "五", "mrn")


def test_the_times_values_came_from_are_encrypted_and_move_with_the_key(tmp_path):
    """`as_of` (when each value was sent: a patient's message times) is encrypted as the values are: not in the
    file in plain text, re-encrypted by a key rotation (the vault still compares times with only the new key),
    and a vault of before 2026-12-05 that holds it in plain text still compares by it and is encrypted by
    `rotate`."""
    old, new = keys.new_key(), keys.new_key()
    when = "2019-07-14T09:26:53.000000|00000000000000000042|line 7"
    with Vault.open(tmp_path, ring(old)) as v:
        v.put([dict(PEOPLE[0], as_of={f: when for f in ("family", "phone")}), PEOPLE[1]])
        v.con.execute("UPDATE identity SET as_of = ? WHERE source_id = 'MRN0001'",  # as an older vault wrote it
                      ['{"phone": "2019-07-14T09:26:53.000000|00000000000000000009|line 2"}'])
        assert v.con.execute("SELECT source_id, typeof(as_of) FROM identity ORDER BY 1").fetchall() == [
            ("MRN0000", "blob"), ("MRN0001", "text")]
        assert v.to_rotate() == 1  # every row under the active key: the plain time alone (the progress bar's total)
    assert b"2019-07-14" not in raw_bytes(tmp_path / "identity").replace(
        b'"2019-07-14T09:26:53.000000|00000000000000000009|line 2"', b"")
    earlier = "2019-07-14T09:26:52.000000|00000000000000000050|line 1"
    with Vault.open(tmp_path, ring(old, new)) as v:
        assert v.to_rotate() == 3
        assert v.rotate() == 3  # the two rows and the matching secret
        assert v.to_rotate() == 0
        assert {r[0] for r in v.con.execute("SELECT typeof(as_of) FROM identity")} == {"blob"}
    with Vault.open(tmp_path, ring(new)) as v:  # the old key gone: times still read and compared
        v.put([dict(source="h1-his", source_id=f"MRN000{i}", phone="13999999999", as_of={"phone": earlier})
               for i in (0, 1)])
        got = {r["source_id"]: r["phone"] for r in v.read("test", "check")}
    assert got == {"MRN0000": PEOPLE[0]["phone"], "MRN0001": PEOPLE[1]["phone"]}  # an older message changes none
    assert b"2019-07-14" not in raw_bytes(tmp_path / "identity")
