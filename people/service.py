"""Rules about people: adding, editing, deactivating, importing, and their passwords."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session
from werkzeug.security import check_password_hash, generate_password_hash

from audit.log import note_before_change, record, record_evidence
from core import low_priority
from core.db import utcnow
from people.models import Person, PersonRole, PersonSchool
from people.passwords import MIN_LENGTH, context_words, password_problem
from people.roles import ROLES, role_code
from training.loader import Federation
from training.status_store import touch

MIN_PASSWORD_LENGTH = MIN_LENGTH
# scrypt with N=2^15, r=8, p=1 (werkzeug's default, OWASP's minimum): about 50 ms and 32 MiB a hash.
PASSWORD_HASH_METHOD = "scrypt:32768:8:1"
# Spend the same time checking a password for an unknown email as for a known one: one hash of
# nothing in particular per method, made when first needed.
_DUMMY_HASHES: dict[str, str] = {}


def password_hash_method() -> str:
    """The production cost always, except in a test run (``TESTING``), which may set a cheaper
    ``PASSWORD_HASH_METHOD`` so that thousands of sign-ins do not each spend 50 ms in scrypt."""
    if current_app and current_app.config.get("TESTING"):
        return current_app.config.get("PASSWORD_HASH_METHOD") or PASSWORD_HASH_METHOD
    return PASSWORD_HASH_METHOD


def _dummy_hash() -> str:
    method = password_hash_method()
    if method not in _DUMMY_HASHES:
        _DUMMY_HASHES[method] = low_priority.run(
            generate_password_hash, "countersign-timing-equaliser", method
        )
    return _DUMMY_HASHES[method]


class PeopleError(ValueError):
    """Input about a person that cannot be accepted; the message says why."""


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise PeopleError(
            f"{email.strip() or 'An empty value'} is not a valid email address: {exc}"
        )


def find_by_email(session: Session, email: str) -> Person | None:
    return session.scalar(select(Person).where(Person.email == email.strip().lower()))


@dataclass(frozen=True)
class PersonData:
    name: str
    email: str
    roles: tuple[str, ...]
    schools: tuple[str, ...] = ()


def clean_person(data: PersonData, federation: Federation) -> PersonData:
    name = " ".join(data.name.split())
    if not name:
        raise PeopleError("Enter the person's full name.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise PeopleError("The name contains control characters; type it again.")
    if len(name) > 200:
        raise PeopleError("The name must be 200 characters or fewer.")
    email = normalise_email(data.email)
    if not data.roles:
        raise PeopleError("Choose at least one role.")
    unknown = [r for r in data.roles if r not in ROLES]
    if unknown:
        raise PeopleError(f"Unknown role: {', '.join(unknown)}.")
    codes = {s.code for s in federation.schools}
    unknown = [s for s in data.schools if s not in codes]
    if unknown:
        raise PeopleError(f"Unknown school: {', '.join(unknown)}.")
    return PersonData(name, email, tuple(sorted(set(data.roles))), tuple(sorted(set(data.schools))))


def _apply(person: Person, data: PersonData) -> None:
    person.name = data.name
    person.email = data.email
    if person.roles != list(data.roles):
        person.role_rows = [PersonRole(role=r) for r in data.roles]
    if person.schools != list(data.schools):
        person.school_rows = [PersonSchool(school=s) for s in data.schools]


def create_person(
    session: Session, data: PersonData, federation: Federation, by_id: int | None = None
) -> Person:
    data = clean_person(data, federation)
    if find_by_email(session, data.email):
        raise PeopleError(f"Someone with the email {data.email} already exists.")
    person = Person(name=data.name, email=data.email, active=True)
    _apply(person, data)
    session.add(person)
    session.flush()
    record_person(session, "person.created", [person.id], by_id, {"roles": " ".join(data.roles)})
    return person


def record_person(
    session: Session,
    event: str,
    person_ids: Iterable[int],
    by_id: int | None,
    detail: Mapping[str, int | str | bool | None] | None = None,
) -> None:
    """Record a change to who people are, with each one's digest as now stored (their email,
    name, state, roles and schools): the chain then notices any later change made behind the
    application's back. Every write to those goes through here, in its own transaction; and
    since who people are decides their training status, they are marked for the status store."""
    person_ids = list(person_ids)
    record_evidence(session, event, "person", person_ids, actor_id=by_id, detail=detail)
    touch(session, person_ids)


def update_person(
    session: Session,
    person: Person,
    data: PersonData,
    federation: Federation,
    by_id: int | None = None,
) -> Person:
    data = clean_person(data, federation)
    other = find_by_email(session, data.email)
    if other is not None and other.id != person.id:
        raise PeopleError(f"Someone else already has the email {data.email}.")
    before, name, email, schools = person.roles, person.name, person.email, person.schools
    note_before_change(session, "person", [person.id])
    _apply(person, data)
    session.flush()
    if before != list(data.roles):
        record_roles_changed(session, person, before, by_id)
    if schools != list(data.schools):
        record_person(session, "person.schools_changed", [person.id], by_id)
    record_identity_changed(session, person, name, email, by_id)
    return person


def changes_how_they_sign_in(person: Person, data: PersonData) -> bool:
    """Whether an edit changes the person's email address (where new-password links go) or their
    roles (what they may do): changes that need the editor to have signed in recently."""
    return data.email.strip().lower() != person.email or set(data.roles) != set(person.roles)


def record_identity_changed(
    session: Session, person: Person, name: str, email: str, by_id: int | None
) -> None:
    """Who changed a person's name or email. The values stay out of the log: it keeps ids only,
    and an erased person's old name must not survive there."""
    for event, old, new in (
        ("person.name_changed", name, person.name),
        ("person.email_changed", email, person.email),
    ):
        if old != new:
            record_person(session, event, [person.id], by_id)
    if (name, email) != (person.name, person.email):
        from lti.links import account_claimed  # lti builds on people: imported when used

        account_claimed(session, person, by_id)  # a launch-made account taken over by someone


def record_roles_changed(
    session: Session, person: Person, before: list[str], by_id: int | None
) -> None:
    record_person(
        session, "person.roles_changed", [person.id], by_id,
        {"from": " ".join(before), "to": " ".join(person.roles)},
    )  # fmt: skip
    from lti.links import closed_roles, roles_changed  # lti builds on people: imported when used

    roles_changed(session, person, by_id)  # a role that sees everyone's records suspends LMS links
    if (set(person.roles) - set(before)) & closed_roles():
        # A session opened before the promotion was opened for the person they were: from the
        # LMS, or with a password alone. It ends, so the new role starts with a sign-in that the
        # role demands (directly, with the second factor where that applies).
        person.auth_version += 1


def end_sessions(session: Session, person: Person, by_id: int | None, keep_current: bool) -> None:
    """Sign a person out everywhere, e.g. after a lost phone or a shared computer left signed in.

    Each session names the ``auth_version`` it was opened under, so one increment ends them all
    at their next request, wherever they are (and voids pending second steps and unused links).
    The caller signs the current session in again when ``keep_current`` says it carries on.
    """
    person.auth_version += 1
    record(
        session, "sessions.ended", actor_id=by_id, subject_type="person", subject_id=person.id,
        detail={"kept_current": keep_current},
    )  # fmt: skip


def deactivate(person: Person, by_id: int | None = None, at: datetime | None = None) -> None:
    """A leaver: they can no longer sign in and are never trained; every record is kept. ``at``
    is when they left (now unless given)."""
    if person.active:
        _note(person)
        person.active = False
        person.deactivated_at = at or utcnow()
        person.auth_version += 1
        _record_on(person, "person.deactivated", by_id)


def reactivate(person: Person, by_id: int | None = None) -> None:
    if not person.active:
        _note(person)
        person.active = True
        person.deactivated_at = None
        _record_on(person, "person.reactivated", by_id)


def _note(person: Person) -> None:
    session = object_session(person)
    if session is not None and person.id is not None:
        note_before_change(session, "person", [person.id])


def _record_on(person: Person, event: str, by_id: int | None) -> None:
    session = object_session(person)
    if session is not None:  # a person not yet stored has no history to audit
        record_person(session, event, [person.id], by_id)


def set_password(person: Person, password: str) -> None:
    """Every way of setting a password comes here, so the rules hold for forms, commands and
    the demo alike (PeopleError says why one is refused)."""
    problem = password_problem(password, context_words(person.name or "", person.email or ""))
    if problem:
        raise PeopleError(problem)
    person.password_hash = low_priority.run(
        generate_password_hash, password, password_hash_method()
    )
    person.auth_version += 1


def check_password(person: Person | None, password: str) -> bool:
    if person is None or not person.password_hash:
        low_priority.run(check_password_hash, _dummy_hash(), password)
        return False
    return low_priority.run(check_password_hash, person.password_hash, password)


# --- CSV import ----------------------------------------------------------------------------------

IMPORT_COLUMNS = ("name", "email", "roles", "schools")


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ImportFailed(PeopleError):
    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _school_code(text: str, federation: Federation) -> str | None:
    wanted = " ".join(text.split()).casefold()
    for school in federation.schools:
        if wanted in (school.code.casefold(), school.name.casefold()):
            return school.code
    return None


def parse_import(text: str, federation: Federation) -> list[tuple[int, PersonData]]:
    """Parse and validate a whole file; every bad row is reported with its line number."""
    if text.startswith("\ufeff"):
        text = text[1:]  # spreadsheet programs add a byte-order mark
    reader = csv.reader(io.StringIO(text, newline=""))
    errors: list[RowError] = []
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFailed([RowError(1, "the file is empty; the first line must be the header")])
    except csv.Error as exc:
        raise ImportFailed([RowError(1, f"not a readable CSV file ({exc})")])
    columns = [h.strip().lower() for h in header]
    missing = [c for c in IMPORT_COLUMNS if c not in columns]
    if missing:
        raise ImportFailed(
            [
                RowError(
                    1,
                    f"the header must name the columns {','.join(IMPORT_COLUMNS)}; "
                    f"missing {', '.join(missing)}",
                )
            ]  # fmt: skip
        )
    index = {c: columns.index(c) for c in IMPORT_COLUMNS}
    rows: list[tuple[int, PersonData]] = []
    seen: dict[str, int] = {}
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) < len(columns):
                values = values + [""] * (len(columns) - len(values))
            get = {c: values[i].strip() for c, i in index.items()}
            problems: list[str] = []
            roles: list[str] = []
            for raw in filter(None, (r.strip() for r in get["roles"].split(";"))):
                code = role_code(raw)
                if code is None:
                    problems.append(f"unknown role {raw!r} (roles: {', '.join(ROLES)})")
                else:
                    roles.append(code)
            schools: list[str] = []
            for raw in filter(None, (s.strip() for s in get["schools"].split(";"))):
                code = _school_code(raw, federation)
                if code is None:
                    names = ", ".join(s.code for s in federation.schools)
                    problems.append(f"unknown school {raw!r} (schools: {names})")
                else:
                    schools.append(code)
            try:
                data = clean_person(
                    PersonData(get["name"], get["email"], tuple(roles), tuple(schools)), federation
                )
            except PeopleError as exc:
                if roles or not problems or "role" not in str(exc):  # else already said why
                    problems.insert(0, str(exc))
                data = None
            if data is not None:
                if data.email in seen:
                    problems.append(f"{data.email} is also on line {seen[data.email]}")
                seen.setdefault(data.email, line)
            if problems:
                errors.extend(RowError(line, p) for p in dict.fromkeys(problems))
            elif data is not None:
                rows.append((line, data))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, f"not a readable CSV line ({exc})"))
    if errors:
        raise ImportFailed(errors)
    if not rows:
        raise ImportFailed([RowError(2, "the file has a header but no people")])
    return rows


def import_people(
    session: Session, text: str, federation: Federation, by_id: int | None = None
) -> ImportResult:
    """Upsert people by email. A file with any bad row imports nothing."""
    rows = parse_import(text, federation)
    result = ImportResult()
    existing = {
        p.email: p
        for p in session.scalars(select(Person).where(Person.email.in_([d.email for _, d in rows])))
    }
    role_changes: list[tuple[Person, list[str]]] = []
    school_changes: list[Person] = []
    created: list[Person] = []
    renamed: list[tuple[Person, str]] = []
    for _line, data in rows:
        person = existing.get(data.email)
        if person is None:
            person = Person(name=data.name, email=data.email, active=True)
            _apply(person, data)
            session.add(person)
            created.append(person)
            result.created.append(data.email)
        elif (person.name, person.roles, person.schools) == (
            data.name,
            list(data.roles),
            list(data.schools),
        ):
            result.unchanged.append(data.email)
        else:
            if person.roles != list(data.roles):
                role_changes.append((person, person.roles))
            if person.schools != list(data.schools):
                school_changes.append(person)
            renamed.append((person, person.name))
            note_before_change(session, "person", [person.id])
            _apply(person, data)
            result.updated.append(data.email)
    session.flush()
    record_person(session, "person.created", [p.id for p in created], by_id, {"via": "import"})
    for person, before in role_changes:
        record_roles_changed(session, person, before, by_id)
    for person in school_changes:
        record_person(session, "person.schools_changed", [person.id], by_id)
    for person, name in renamed:
        record_identity_changed(session, person, name, person.email, by_id)
    record(
        session, "people.imported", actor_id=by_id,
        detail={"created": len(result.created), "updated": len(result.updated),
                "unchanged": len(result.unchanged)},
    )  # fmt: skip
    return result
