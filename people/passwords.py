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


# Words anyone guessing a password here would try first, besides the person's own name and email.
SITE_WORDS = ("countersign",)
CONTEXT_MESSAGE = (
    "Do not use your name, your email address or the name of this site in your password."
)


def context_words(name: str, email: str) -> tuple[str, ...]:
    """The person's whole name and their email's local part (4 characters or more), and the
    site's own name: a password containing any of them is among an attacker's first guesses."""
    whole_name = "".join(name.split())
    words = (whole_name, email.partition("@")[0], *SITE_WORDS)
    return tuple(dict.fromkeys(w.lower() for w in words if len(w) >= 4))


def password_problem(password: str, context: tuple[str, ...] = ()) -> str | None:
    """Why this password cannot be used, in words for the person choosing it; None if it can.

    ``context`` holds words specific to the person and the site (see :func:`context_words`).
    """
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    if is_common(password):
        return COMMON_MESSAGE
    squeezed = "".join(password.lower().split())  # "Sam Smith 2026" contains "samsmith"
    if any(word in squeezed for word in context):
        return CONTEXT_MESSAGE
    return None
