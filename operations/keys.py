"""The keys the evidence depends on, and where each one lives.

A database restored without its keys is a record nobody can check: the audit chain is keyed by the
audit key, sessions and emailed links by the secret key, and platforms trust the LTI key's public
half. Each key is either configured (an environment variable) or a file the app made in the
instance folder on first use; only files can go into a backup.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Flask


@dataclass(frozen=True)
class KeyFile:
    name: str  # its name inside a backup
    label: str  # how messages speak of it
    path: Path
    configured: bool  # set by an environment variable instead of this file
    # Whether anything recorded depends on it. The secret key signs only sessions, CSRF tokens and
    # emailed links, which all expire: a restore keeps one the instance already has.
    recorded: bool = True


def key_files(app: Flask) -> list[KeyFile]:
    """Every key of this app, with the file it is (or would be) kept in."""
    instance = Path(app.instance_path)
    lti_file = app.config.get("LTI_PRIVATE_KEY_FILE")
    return [
        KeyFile(
            "audit_key", "the audit log's key", instance / "audit_key",
            configured=bool(app.config.get("AUDIT_KEY")),
        ),
        KeyFile(
            "secret_key", "the secret key (sessions and emailed links)", instance / "secret_key",
            # The app puts the file's content into SECRET_KEY itself: only a different value is
            # one configured from outside.
            configured=_configured_secret(app, instance / "secret_key"), recorded=False,
        ),
        KeyFile(
            "lti_private_key.pem", "the LTI tool's private key",
            Path(lti_file) if lti_file else instance / "lti_private_key.pem",
            configured=False,
        ),
        *_keyring_files(app),
    ]  # fmt: skip


# A key made by rotation, and beside it (``.at``) where in the log it took over.
KEYRING_MEMBER = re.compile(r"audit_keys/([0-9a-f]{16}(?:\.at)?)")


def keyring_file(app: Flask, name: str) -> KeyFile | None:
    """The key file a backup's ``audit_keys/<id>`` member goes to: a key made by rotating the
    audit log's key (``flask audit rotate-key``); None for any other name."""
    match = KEYRING_MEMBER.fullmatch(name)
    if match is None:
        return None
    return KeyFile(
        name, f"the audit log's key {match.group(1)} (from a rotation)"
        if "." not in match.group(1) else f"where the audit log's key {match.group(1)[:16]} took over",
        Path(app.instance_path) / "audit_keys" / match.group(1), configured=False,
    )  # fmt: skip


def _keyring_files(app: Flask) -> list[KeyFile]:
    folder = Path(app.instance_path) / "audit_keys"
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return [k for name in found if (k := keyring_file(app, f"audit_keys/{name}")) is not None]


def _configured_secret(app: Flask, path: Path) -> bool:
    try:
        return path.read_text().strip() != str(app.config.get("SECRET_KEY", ""))
    except FileNotFoundError:
        return bool(app.config.get("SECRET_KEY"))


def fingerprint(data: bytes) -> str:
    """A short digest that tells two keys apart without showing either."""
    return hashlib.sha256(b"countersign key fingerprint\0" + data.strip()).hexdigest()[:16]


@dataclass(frozen=True)
class BackupKey:
    """The key that authenticates backups: a MAC over each backup's manifest. It is never put in
    a backup, so whoever holds a backup file alone cannot alter it unnoticed."""

    data: bytes
    where: str  # how messages speak of where it is kept

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.data)


def backup_key(app: Flask, *, create: bool = False) -> BackupKey | None:
    """``COUNTERSIGN_BACKUP_KEY``, else the file ``COUNTERSIGN_BACKUP_KEY_FILE`` names, else
    ``instance/backup_key``; with ``create``, that last file is made (0600) when none exists."""
    configured = str(app.config.get("BACKUP_KEY") or "").strip()
    if configured:
        return BackupKey(configured.encode(), "COUNTERSIGN_BACKUP_KEY")
    named = app.config.get("BACKUP_KEY_FILE")
    path = Path(named) if named else Path(app.instance_path) / "backup_key"
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        if named:  # a file that was meant to be there: say so rather than make another
            raise
        if not create:
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            data = path.read_bytes().strip()
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            data = path.read_bytes().strip()
    if not data:
        raise ValueError(f"The backup key file {path} is empty.")
    return BackupKey(data, str(path))
