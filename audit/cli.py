"""``flask audit verify|head``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from audit import anchor
from audit.log import Head, head, seal_unrecorded, verify
from core.db import db, writing


@click.group("audit", help="The tamper-evident audit log.")
def audit_cli() -> None:
    pass


@audit_cli.command(
    "verify",
    help="Check every row's hash and the chain between rows. With --head (as printed on an "
    "evidence pack), or else the latest head in COUNTERSIGN_AUDIT_HEAD_FILE when set, also check "
    "that nothing up to it was removed or rewritten.",
)
@click.option(
    "--head",
    "expected",
    metavar="SEQUENCE:HASH",
    help="A head recorded earlier (instead of the head file's latest).",
)
@with_appcontext
def verify_command(expected: str | None) -> None:
    try:
        earlier = Head.parse(expected) if expected else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--head")
    path = anchor.head_file(current_app)
    if earlier is None and path is not None:
        try:
            recorded = anchor.latest(path)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"The recorded head cannot be read: {exc}.")
        if recorded is None:
            click.echo(f"WARNING: no head has been recorded in {path} yet.", err=True)
        else:
            earlier = recorded.head
            click.echo(f"Comparing with the head recorded {recorded.at} in {path}.")
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


@audit_cli.command(
    "head",
    help="Print the latest row's sequence and hash, to record elsewhere. With --record, also "
    "append it to COUNTERSIGN_AUDIT_HEAD_FILE, after checking it follows the head last recorded "
    "there.",
)
@click.option("--record", "keep", is_flag=True, help="Append it to COUNTERSIGN_AUDIT_HEAD_FILE.")
@with_appcontext
def head_command(keep: bool) -> None:
    path = anchor.head_file(current_app)
    if keep and path is None:
        raise click.ClickException("--record needs COUNTERSIGN_AUDIT_HEAD_FILE: set it to a file.")
    latest = head(db.session)
    click.echo(str(latest) if latest else "The audit log is empty.")
    if not keep or path is None:
        return
    try:
        earlier = anchor.latest(path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"The recorded head cannot be read: {exc}.")
    if earlier is not None:
        # A shorter or rewritten log is never recorded over the evidence that it was longer.
        why = anchor.check_against(db.session, earlier.head, latest)
        if why:
            raise click.ClickException(
                f"Not recorded: the audit log does not follow the head recorded {earlier.at} "
                f"({earlier.head}): {why}. Run `flask audit verify`."
            )
    if latest is None:
        return
    try:
        line = anchor.record(path, latest)
    except OSError as exc:
        raise click.ClickException(f"The head cannot be recorded in {path}: {exc}.")
    click.echo(f"Recorded in {path}: {line}")


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
