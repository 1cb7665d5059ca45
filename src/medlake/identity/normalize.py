"""Normalised comparison values and keyed blocking keys for one source identity.

Runs inside the vault process only: the outputs that hold plaintext (comparison values) live in memory for a
linkage run; what is kept at rest are the blocking keys, HMAC-SHA256 with the vault's matching secret.
Chinese names are compared in characters and in pinyin (pypinyin), Western names in lower-case letters.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import unicodedata


FIELDS = ("family", "given", "full_name", "id_number", "insurance", "birth_date", "sex", "phone", "address", "mrn")
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_NOT_LETTER = re.compile(r"[^a-z]")


def id_check_ok(s: str | None) -> bool:
    """GB 11643-1999: 17 digits and a check character."""
    if not s or len(s) != 18 or not (s[:17].isascii() and s[:17].isdigit()):  # isdigit alone: ² and 𐩀 (int fails)
        return False
    return "10X98765432"[sum(int(c) * w for c, w in zip(s[:17], WEIGHTS)) % 11] == s[17]


def clean(s) -> str | None:
    if s is None:
        return None
    s = unicodedata.normalize("NFKC", str(s)).strip()
    return s or None


def has_cjk(s: str | None) -> bool:
    return bool(s) and bool(_CJK.search(s))


def pinyin(s: str | None) -> str | None:
    """Lower-case latin letters only: pinyin for characters, the letters themselves for latin names."""
    if not s:
        return None
    if not has_cjk(s):
        return _NOT_LETTER.sub("", s.lower()) or None
    from pypinyin import lazy_pinyin  # (imported when first needed: loading its dictionaries takes 0.2 s)

    return _NOT_LETTER.sub("", "".join(lazy_pinyin(s)).lower()) or None


def split_full(full: str) -> tuple[str | None, str | None]:
    """Family and given name from a full name: '张伟' -> 张, 伟; 'John Smith' -> Smith, John; 'SMITH, John'."""
    full = full.strip()
    if has_cjk(full):
        fam = 2 if len(full) >= 4 else 1  # compound surnames (欧阳) in 4-character names
        return full[:fam], full[fam:] or None
    if "," in full:
        fam, _, given = full.partition(",")
        return fam.strip() or None, given.strip() or None
    parts = full.split()
    return (parts[-1], " ".join(parts[:-1]) or None) if len(parts) > 1 else (parts[0] if parts else None, None)


def norm_date(v) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        return v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    s = re.sub(r"[^0-9]", "", str(v))
    if len(s) >= 8:
        return f"{s[:4]}-{s[4:6]}-{s[6:8]}"
    return None


def norm_sex(v) -> str | None:
    s = (clean(v) or "").upper()
    return {"M": "M", "MALE": "M", "男": "M", "1": "M", "F": "F", "FEMALE": "F", "女": "F", "2": "F"}.get(s)


def norm_phone(v) -> str | None:
    d = re.sub(r"[^0-9]", "", str(v or ""))
    if d.startswith("86") and len(d) == 13:
        d = d[2:]
    return d[-11:] or None


def norm_text(v) -> str | None:
    s = clean(v)
    return re.sub(r"[\s,.;:，。#-]+", "", s.lower()) or None if s else None


def comparison_values(rec: dict) -> dict:
    """The values a linkage compares, from one decrypted identity (`FIELDS`)."""
    family, given = clean(rec.get("family")), clean(rec.get("given"))
    full = clean(rec.get("full_name"))
    if full and not (family or given):
        family, given = split_full(full)
    elif family and not given and has_cjk(family) and len(family) >= 2:  # '张伟' in one component (PID-5.1)
        family, given = split_full(family)
    fam_py, giv_py = pinyin(family), pinyin(given)
    chars = (family or "") + (given or "")
    idn = (clean(rec.get("id_number")) or "").upper().replace(" ", "") or None
    dob = norm_date(rec.get("birth_date"))
    return {
        "name_cjk": chars if has_cjk(chars) else None,
        "name_py": ((fam_py or "") + (giv_py or "")) or None,
        "name_py_rev": ((giv_py or "") + (fam_py or "")) or None,
        "family_py": fam_py,
        "given_py": giv_py,
        "id_number": idn,
        "id_valid": id_check_ok(idn),
        "birth_date": dob,
        "sex": norm_sex(rec.get("sex")),
        "phone": norm_phone(rec.get("phone")),
        "address": norm_text(rec.get("address")),
        "insurance": norm_text(rec.get("insurance")),
        # the hospital's own record number: the same MRN at the same hospital is the same registration
        "mrn": f"{rec['hospital']}|{clean(rec.get('mrn'))}" if rec.get("hospital") and clean(rec.get("mrn")) else None,
    }


BLOCKING_KINDS = ("id", "phone", "insurance", "name_year", "name_dob", "dob_initial", "mrn")


def blocking_values(cv: dict) -> dict[str, str | None]:
    """Plaintext blocking values (kept in memory only; `blocking_keys` HMACs them for storage)."""
    py = cv["name_py"]
    tokens = "".join(sorted(filter(None, (cv["family_py"], cv["given_py"])))) or None  # order-free: swapped names
    dob = cv["birth_date"]
    return {
        "id": cv["id_number"],
        "phone": cv["phone"] if cv["phone"] and len(cv["phone"]) >= 7 else None,
        "insurance": cv["insurance"],
        "name_year": f"{tokens}|{dob[:4]}" if tokens and dob else None,  # day/month swaps and day typos
        "name_dob": f"{tokens}|{dob}" if tokens and dob else None,
        "dob_initial": f"{dob}|{py[0]}" if dob and py else None,
        "mrn": cv["mrn"],
    }


def blocking_keys(secret: bytes, cv: dict) -> dict[str, str | None]:
    """HMAC-SHA256(matching secret, kind + value), 16 bytes hex, per blocking kind."""
    return {k: (hmac.new(secret, f"{k}\x00{v}".encode(), hashlib.sha256).hexdigest()[:32] if v else None)
            for k, v in blocking_values(cv).items()}
