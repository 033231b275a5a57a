"""The record core: the sealed, encrypted, write-once archive.

Owns the database base, the keyring and envelope encryption, the vault (the
WORM object store and its records), capture of webhooks and chat exports,
media fetch, the blind index, the audit chain and the clock. Nothing here
imports another Strongroom package or ``litestar``.
"""
