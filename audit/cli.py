"""``flask audit verify|head``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from audit.log import Head, head, verify
from core.db import db


@click.group("audit", help="The tamper-evident audit log.")
def audit_cli() -> None:
    pass


@audit_cli.command(
    "verify",
    help="Check every row's hash and the chain between rows. With --head (as printed on an "
    "evidence pack), also check that nothing after it was removed or rewritten.",
)
@click.option("--head", "expected", metavar="SEQUENCE:HASH", help="A head recorded earlier.")
@with_appcontext
def verify_command(expected: str | None) -> None:
    try:
        earlier = Head.parse(expected) if expected else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--head")
    result = verify(db.session, earlier)
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if not result.ok:
        raise click.ClickException(
            f"The audit log has been tampered with: {len(result.problems)} problem(s) "
            f"in {result.rows} rows."
        )
    click.echo(f"The audit log is intact: {result.rows} rows, head {result.head or 'none'}.")


@audit_cli.command("head", help="Print the latest row's sequence and hash, to record elsewhere.")
@with_appcontext
def head_command() -> None:
    latest = head(db.session)
    click.echo(str(latest) if latest else "The audit log is empty.")
