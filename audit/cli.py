"""``flask audit verify|head``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import func, select

from audit.log import Head, SealRefused, head, plan_seal, seal, verify
from core.db import db, writing
from people.models import Person


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
    help="Record the digest of each evidence row from before evidence digests (a database "
    "upgraded from a version without them), so that verify reports later changes to those rows. "
    "The first run records where digests began; rows newer than that are never sealed, and seal "
    "refuses while any such row is unrecorded. Lists the rows and asks before sealing.",
)
@click.option("--actor", "email", required=True, metavar="EMAIL", help="The administrator sealing.")
@click.option("--yes", is_flag=True, help="Seal without asking.")
@with_appcontext
def seal_command(email: str, yes: bool) -> None:
    session = db.session
    actor = session.scalar(
        select(Person).where(func.lower(Person.email) == email.strip().lower(), Person.active)
    )
    if actor is None or not actor.has_role("admin"):
        raise click.BadParameter(
            "give the email address of an active administrator", param_hint="--actor"
        )
    try:
        plan = plan_seal(session)
    except SealRefused as exc:
        raise click.ClickException(str(exc))
    if not plan.rows and not plan.new_start:
        click.echo("Every evidence row from before digests is already recorded; nothing sealed.")
        return
    if plan.new_start:
        fixed = ", ".join(f"{t.replace('_', ' ')} {n}" for t, n in sorted(plan.new_start.items()))
        click.echo(f"Evidence digests began after these ids (recorded now): {fixed}.")
    for table, rows in sorted(plan.rows.items()):
        click.echo(f"To seal: {table.replace('_', ' ')} {_ranges(sorted(rows))}")
    if not yes:
        click.confirm("Record these in the audit log?", abort=True)
    with writing(session):
        if plan_seal(session) != plan:
            raise click.ClickException("The evidence changed meanwhile; nothing sealed. Run again.")
        sealed = seal(session, plan, actor.id)
    if not sealed:
        click.echo("Nothing to seal; where digests began is recorded.")
        return
    counts = ", ".join(f"{table.replace('_', ' ')}: {n}" for table, n in sorted(sealed.items()))
    click.echo(f"Sealed {sum(sealed.values())} evidence rows ({counts}).")


def _ranges(ids: list[int]) -> str:
    """1, 2, 3, 5 → "1-3, 5"."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
