"""Tamper-evident records: keys, canonical hashing, the signed ledger, the privacy report, the verifier."""
