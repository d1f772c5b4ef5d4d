"""Demo people, one per role, for a new installation."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select

from core.db import db
from mfa.rules import first_sign_in_note
from people.models import Person, PersonRole, PersonSchool
from people.roles import ROLES
from people.service import record_person, set_password

DEMO_DOMAIN = "demo.ladysmith.example"
DEMO_NAMES = {
    "staff": "Sam Teaching-Assistant",
    "governor": "Gwen Governor",
    "volunteer": "Vic Volunteer",
    "parent": "Pat Parent",
    "slt": "Sally Senior-Leader",
    "admin": "Alex Administrator",
}


def no_one_can_sign_in() -> bool:
    """True while the database has no active administrator (a new installation)."""
    return not db.session.scalar(
        select(func.count())
        .select_from(Person)
        .join(PersonRole, PersonRole.person_id == Person.id)
        .where(Person.active.is_(True), PersonRole.role == "admin")
    )


def seed_demo(echo: Callable[[str], None]) -> bool:
    """Create one demo person per role when the database has no people yet.

    Passwords are random, printed once and kept in the instance folder (never in the repository).
    Returns False when people already exist (nothing is changed).
    """
    session = db.session
    notes = _notes_path()
    if session.scalar(select(func.count()).select_from(Person)):
        if notes is not None and notes.exists():
            echo(f"Demo sign-in details: {notes}")
        return False
    schools = [s.code for s in current_app.extensions["countersign.federation"].schools]
    lines: list[str] = []
    added: list[Person] = []
    for index, (role, name) in enumerate(DEMO_NAMES.items()):
        password = secrets.token_urlsafe(9)
        person = Person(name=name, email=f"{role}@{DEMO_DOMAIN}", active=True)
        person.role_rows = [PersonRole(role=role)] + (
            [PersonRole(role="staff")] if role in ("slt", "admin") else []
        )
        if schools and role not in ("governor", "admin"):
            person.school_rows = [PersonSchool(school=schools[index % len(schools)])]
        set_password(person, password)
        session.add(person)
        added.append(person)
        lines.append(f"  {ROLES[role]:<24} {person.email:<34} {password}")
    session.flush()
    record_person(session, "person.created", [p.id for p in added], None, {"via": "demo"})
    session.commit()
    text = "Demo people (role, email, password):\n" + "\n".join(lines) + "\n"
    note = first_sign_in_note(current_app.config)
    if note:
        text += note + "\n"
    if notes is None:
        echo(text)
    else:
        notes.write_text(text)
        notes.chmod(0o600)
        echo(text + f"(also saved in {notes})")
    return True


def _notes_path() -> Path | None:
    """Beside an SQLite database file, so the details always match the database they are for."""
    url = db.engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).with_name("demo-people.txt")
    return None
