"""Pseudonyms: HMAC-SHA256(site secret, project, person_id), per person and per project.

The site secret lives encrypted in the vault (stable across key rotations), so pseudonyms are stable for a
project, differ between projects (two releases cannot be joined without the vault), and can only be reversed
through the vault by an authorised role; every attempt, granted or refused, is in the vault's access log.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from medlake.identity.vault import Vault, VaultError

REIDENTIFY_ROLES = ("trustee",)


def pseudonym(vault: Vault, project: str, person_id: int) -> str:
    if not project:
        raise ValueError("a pseudonym needs a project name")
    mac = hmac.new(vault.secret("pseudonym"), f"{project}\x00{int(person_id)}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:15]).decode().lower()  # 24 characters, 120 bits


def pseudonyms(vault: Vault, project: str, person_ids) -> list[str]:
    return [pseudonym(vault, project, p) for p in person_ids]


def reidentify(vault: Vault, engine, project: str, pseudo: str, *, who: str, role: str, why: str,
               allowed_roles=REIDENTIFY_ROLES) -> dict:
    """person_id and the source identities (plaintext) behind a project's pseudonym. Only for an allowed role;
    logged either way."""
    if role not in allowed_roles:
        vault.log(who, why or "-", f"re-identification of {project}/{pseudo} refused", 0, role=role, granted=False)
        raise VaultError(f"role {role!r} may not re-identify (allowed: {', '.join(allowed_roles)}); the attempt is logged")
    if not why:
        raise VaultError("re-identification needs a reason (why)")
    ids = engine.query("SELECT DISTINCT person_id FROM empi_person_map").column(0).to_pylist()
    hit = [p for p in ids if pseudonym(vault, project, p) == pseudo]
    if not hit:
        vault.log(who, why, f"re-identification of {project}/{pseudo}: no such pseudonym", 0, role=role)
        raise VaultError(f"{pseudo} is not a pseudonym of project {project!r}")
    keys = [(r["source"], r["source_id"]) for r in engine.query(
        "SELECT source, source_id FROM empi_person_map WHERE person_id = ? ORDER BY 1, 2", [hit[0]]).to_pylist()]
    return {"person_id": hit[0], "identities": vault.read(who, f"re-identify {project}/{pseudo}: {why}", keys, role=role)}
