"""``flask people import|add|invite|erase-expired``."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from audit.log import record
from core.db import db
from core.web import external_url, federation
from people.auth import INVITE, make_link_token
from people.privacy import (
    ErasureRefused,
    ErasureTampered,
    erase_person,
    expired_leavers,
    retention_days,
)
from people.service import PeopleError, PersonData, create_person, find_by_email, import_people


@click.group("people", help="Import and manage people.")
def people_cli() -> None:
    pass


@people_cli.command(
    "import", help="Upsert people from a CSV file with columns name,email,roles,schools."
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_appcontext
def import_command(file: Path) -> None:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text; save it as CSV UTF-8 and try again.")
    session = db.session
    try:
        result = import_people(session, text, federation())
        session.commit()
    except PeopleError as exc:
        session.rollback()
        for error in getattr(exc, "errors", [exc]):
            click.echo(f"{file}:{error}", err=True)
        raise click.ClickException("Nothing was imported; fix the rows above and run again.")
    click.echo(
        f"Imported {file}: {len(result.created)} added, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged."
    )


@people_cli.command("add", help="Add a person and print an invitation link to set their password.")
@click.option("--name", required=True)
@click.option("--email", required=True)
@click.option("--roles", required=True, help="Role codes separated by ';', e.g. 'staff;admin'.")
@click.option(
    "--schools", default="", help="School codes separated by ';' (none: federation-wide)."
)
@with_appcontext
def add_command(name: str, email: str, roles: str, schools: str) -> None:
    session = db.session
    split = lambda text: tuple(filter(None, (p.strip() for p in text.split(";"))))  # noqa: E731
    try:
        if find_by_email(session, email):
            raise PeopleError(f"{email} already exists.")
        person = create_person(
            session, PersonData(name, email, split(roles), split(schools)), federation()
        )
        session.commit()
    except PeopleError as exc:
        session.rollback()
        raise click.ClickException(str(exc))
    token = make_link_token(current_app.config["SECRET_KEY"], INVITE, person)
    with current_app.test_request_context():
        link = external_url("auth.accept_invite", token=token)
    # Printed for the administrator at the terminal, never logged; the log says only that it was.
    record(
        session, "link.invite_issued", subject_type="person", subject_id=person.id,
        detail={"via": "command"},
    )  # fmt: skip
    session.commit()
    click.echo(f"Added {person.name} <{person.email}>. Invitation link (single use):\n{link}")


@people_cli.command(
    "erase-expired",
    help="Erase the personal data of every leaver deactivated longer ago than "
    "COUNTERSIGN_RETENTION_DAYS, keeping the anonymised evidence of their training.",
)
@click.option("--dry-run", is_flag=True, help="List who would be erased and change nothing.")
@with_appcontext
def erase_expired_command(dry_run: bool) -> None:
    session = db.session
    try:
        days = retention_days(current_app.config)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    due = expired_leavers(session, days)
    session.rollback()  # end the read: each erasure below is a transaction of its own
    if dry_run:
        for person_id in due:
            click.echo(f"would erase person #{person_id}")
        click.echo(f"{len(due)} leaver(s) past the {days}-day retention period; nothing changed.")
        return
    erased: list[int] = []
    failed = 0
    for person_id in due:
        try:
            erase_person(session, person_id, actor_id=None, retention_days=days)
            session.commit()
        except ErasureTampered as exc:  # evidence changed behind the app's back: look into it
            session.rollback()
            click.echo(f"person #{person_id}: not erased: {exc}", err=True)
            failed += 1
        except ErasureRefused as exc:  # e.g. reactivated meanwhile
            session.rollback()
            click.echo(f"person #{person_id}: skipped: {exc}", err=True)
        except Exception as exc:
            session.rollback()
            click.echo(f"person #{person_id}: not erased: {exc}", err=True)
            failed += 1
        else:
            erased.append(person_id)
            click.echo(f"erased person #{person_id}")
    click.echo(f"{len(erased)} leaver(s) erased after the {days}-day retention period.")
    if failed:
        raise click.ClickException(f"{failed} erasure(s) failed; nothing was changed for them.")
