"""``flask audit verify|head``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from audit.log import Head, head, seal_unrecorded, verify
from core.db import db, writing


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
    click.echo(
        f"The audit log is intact: {result.rows} rows, head {result.head or 'none'}; "
        f"{result.evidence_rows} evidence rows match their digests."
    )


@audit_cli.command("head", help="Print the latest row's sequence and hash, to record elsewhere.")
@with_appcontext
def head_command() -> None:
    latest = head(db.session)
    click.echo(str(latest) if latest else "The audit log is empty.")


@audit_cli.command(
    "seal",
    help="Record the digest of every evidence row the audit log does not record yet. Run once, "
    "straight after upgrading from a version without evidence digests; afterwards verify "
    "reports any change to those rows. Run verify first: whatever it lists as inserted without "
    "an audit row is what this seals.",
)
@with_appcontext
def seal_command() -> None:
    session = db.session
    with writing(session):
        sealed = seal_unrecorded(session)
    if not sealed:
        click.echo("Every evidence row is already recorded; nothing sealed.")
        return
    counts = ", ".join(f"{table.replace('_', ' ')}: {n}" for table, n in sorted(sealed.items()))
    click.echo(f"Sealed {sum(sealed.values())} evidence rows ({counts}).")
