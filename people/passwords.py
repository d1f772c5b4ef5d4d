"""The rules a new password must meet: long enough, not absurdly long, not a common password.

The common-password list ships with the application (``people/data``): nothing is looked up over
the network. It is read once per process, on first use, into a set.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

MIN_LENGTH = 10
# Generous enough for any passphrase or password manager; the cap keeps hashing cheap.
MAX_LENGTH = 256
COMMON_LIST = Path(__file__).resolve().parent / "data" / "common-passwords.txt.gz"

COMMON_MESSAGE = (
    "This password is on a list of common passwords that attackers try first. "
    "Choose another: a few unrelated words work well."
)


@functools.cache
def common_passwords() -> frozenset[str]:
    """Lower-cased common passwords of MIN_LENGTH or more characters (shorter ones fail anyway)."""
    with gzip.open(COMMON_LIST, "rt", encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f if line.strip())


def is_common(password: str) -> bool:
    """Case does not make a listed password safe: ``PassWord1234`` is refused like ``password1234``."""
    return password.lower() in common_passwords()


def password_problem(password: str) -> str | None:
    """Why this password cannot be used, in words for the person choosing it; None if it can."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    if is_common(password):
        return COMMON_MESSAGE
    return None
