"""Vault keys: AES-256-GCM data keys from a key file or the environment, never from the repo or the store.

- `MEDLAKE_VAULT_KEY_FILE`: a file with one base64 key (32 bytes) per line; `#` starts a comment. The LAST key
  is the active one (new ciphertexts); the others stay readable, so a rotation can run while the vault is in use.
- `MEDLAKE_VAULT_KEY`: one base64 key, or several separated by commas (the last is active).

A key's id is derived from the key itself (first 8 hex digits of a SHA-256 over a label and the key), so the
id stored beside each ciphertext names the key without revealing it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
VERSION = b"\x01"


class VaultKeyError(ValueError):
    """A key is missing or wrong; the message says which and what to do."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"medlake-vault-key-id\x00" + key).hexdigest()[:8]


def new_key() -> str:
    """A fresh random key, base64, for a key file line."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise VaultKeyError(f"{where}: not base64 ({e}); make a key with `medlake identity new-key`") from e
    if len(key) != 32:
        raise VaultKeyError(f"{where}: a vault key must be 32 bytes (AES-256), this one is {len(key)}")
    return key


@dataclass
class KeyRing:
    keys: list[bytes]  # oldest first; the last is active
    origin: str = "?"

    def __post_init__(self):
        if not self.keys:
            raise VaultKeyError(f"{self.origin}: no key")
        self.by_id = {key_id(k): AESGCM(k) for k in self.keys}
        self.active_id = key_id(self.keys[-1])

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """version byte + key id (4 bytes) + nonce + ciphertext with tag."""
        nonce = os.urandom(NONCE)
        return VERSION + bytes.fromhex(self.active_id) + nonce + self.by_id[self.active_id].encrypt(nonce, plaintext, aad)

    @staticmethod
    def blob_key_id(blob: bytes) -> str:
        return blob[1:5].hex()

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if blob[:1] != VERSION:
            raise VaultKeyError("vault value has an unknown format version")
        kid = blob[1:5].hex()
        aes = self.by_id.get(kid)
        if aes is None:
            raise VaultKeyError(f"vault value is encrypted with key {kid}, which is not in {self.origin}: "
                            "put that key back in the key file (older keys stay listed until rotation is done)")
        return aes.decrypt(blob[5:5 + NONCE], blob[5 + NONCE:], aad)


def load(env: dict | None = None) -> KeyRing:
    env = os.environ if env is None else env
    path = env.get("MEDLAKE_VAULT_KEY_FILE")
    if path:
        p = Path(path)
        if not p.exists():
            raise VaultKeyError(f"MEDLAKE_VAULT_KEY_FILE={path}: no such file; create it with "
                            f"`medlake identity new-key --key-file {path}`")
        keys = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(_decode(line, f"{path} line {n}"))
        if not keys:
            raise VaultKeyError(f"{path}: no key in the file; add one with `medlake identity new-key --key-file {path}`")
        return KeyRing(keys, origin=str(path))
    text = env.get("MEDLAKE_VAULT_KEY")
    if text:
        return KeyRing([_decode(t, f"MEDLAKE_VAULT_KEY item {i + 1}") for i, t in enumerate(text.split(","))],
                       origin="MEDLAKE_VAULT_KEY")
    raise VaultKeyError("no vault key: set MEDLAKE_VAULT_KEY_FILE to a key file (create one with "
                    "`medlake identity new-key --key-file PATH`) or MEDLAKE_VAULT_KEY to a base64 32-byte key")


def append_key(path: str | Path) -> str:
    """Add a new active key to a key file (created with mode 600); returns the new key's id."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(key + "\n")
    return key_id(base64.b64decode(key))
