"""The tamper-evident audit log: security-relevant events, hash-chained and append-only."""
