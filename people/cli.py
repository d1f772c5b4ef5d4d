"""``flask people import|add|invite``."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from core.db import db
from core.events import statuses_changed
from core.web import external_url, federation
from people.auth import INVITE, make_link_token
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
        statuses_changed(None)
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
    click.echo(f"Added {person.name} <{person.email}>. Invitation link (single use):\n{link}")
