"""The audit log's head, kept outside the database.

Removing the newest rows of the chain leaves a valid, shorter chain: only a head recorded earlier,
somewhere a database writer cannot reach, shows that rows are missing at the end. With
``COUNTERSIGN_AUDIT_HEAD_FILE`` set, ``flask audit head --record`` appends ``TIME SEQUENCE:HASH``
to that file (the deploy runs it as a user other than the app's, and the line also goes to the
journal), and ``flask audit verify`` compares the log with the latest line by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.log import Head
from audit.models import AuditEvent
from core.db import utcnow


@dataclass(frozen=True)
class Recorded:
    at: str
    head: Head


def head_file(app: Flask) -> Path | None:
    configured = str(app.config.get("AUDIT_HEAD_FILE") or "").strip()
    return Path(configured) if configured else None


def latest(path: Path) -> Recorded | None:
    """The last head in the file; None when nothing has been recorded there yet. A last line that
    is not a head is an error, not a reason to skip the comparison."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return None
    at, _, value = lines[-1].rpartition(" ")
    try:
        return Recorded(at, Head.parse(value))
    except ValueError:
        raise ValueError(f"the last line of {path} is not TIME SEQUENCE:HASH") from None


def all_heads(path: Path) -> list[Recorded]:
    """Every head recorded in the file, oldest first; a line that is not a head is an error."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        at, _, value = line.rpartition(" ")
        try:
            found.append(Recorded(at, Head.parse(value)))
        except ValueError:
            raise ValueError(f"line {number} of {path} is not TIME SEQUENCE:HASH") from None
    return found


def check_against(session: Session, earlier: Head, current: Head | None) -> str | None:
    """Why ``current`` cannot follow ``earlier`` (rows gone from the end, or the row at the
    earlier head rewritten); None when it can. Needs no key: it compares stored hashes."""
    if current is None or current.seq < earlier.seq:
        last = current.seq if current else 0
        return f"rows {last + 1} to {earlier.seq} removed from the end"
    found = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == earlier.seq))
    if found != earlier.hash:
        return f"row {earlier.seq} is not the row recorded earlier (the log was rewritten)"
    return None


def record(path: Path, current: Head) -> str:
    """Append ``TIME SEQUENCE:HASH`` (never rewriting what is there); returns the line."""
    line = f"{utcnow().isoformat(timespec='seconds')} {current}"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # Heads are not secret (every evidence pack prints one): the app's user must read the
        # file, whatever the umask the app sets for its own files.
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 != 0o644:
            os.fchmod(fd, 0o644)
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return line
