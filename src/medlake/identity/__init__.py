"""Identity: the encrypted identity vault, the EMPI (one person across systems) and pseudonyms.

- `vault.Vault`: identifying values of every source identity, AES-GCM encrypted, keyed blocking keys, an
  append-only access log of every plaintext read; `keys`: key file / environment, rotation.
- `empi`: Splink linkage, review queue, decisions (A40 merges, accept, reject, unmerge), stable person_ids in
  `empi_person_map(source, source_id, person_id)` in the store (`empi.person_id_for`).
- `staging`: source identities and merges from the staging tables; `vault_staging` moves identifying staging
  columns into the vault.
- `pseudonym`: per-project HMAC pseudonyms; re-identification only through the vault, by an authorised role.

See docs/identity.md.
"""
