"""``flask audit verify|head``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select

from audit import anchor
from audit.log import (
    KEYRING,
    Head,
    SealRefused,
    forget_key,
    head,
    plan_seal,
    rotate_key,
    seal,
    verify,
)
from core.db import db, writing
from people.models import Person


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
    actor = _administrator(email)
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


def _administrator(email: str) -> Person:
    actor = db.session.scalar(
        select(Person).where(func.lower(Person.email) == email.strip().lower(), Person.active)
    )
    if actor is None or not actor.has_role("admin"):
        raise click.BadParameter(
            "give the email address of an active administrator", param_hint="--actor"
        )
    return actor


@audit_cli.command(
    "rotate-key",
    help="Replace the audit log's key: later rows are hashed with a new key, kept in the instance "
    f"folder's {KEYRING}/ folder; earlier keys stay for verify. Do it when a key may have been "
    "seen, and on a schedule (README: Keys and algorithms). Back up straight after, and copy the "
    "new key file to every server that runs the app.",
)
@click.option("--actor", "email", required=True, metavar="EMAIL", help="The administrator.")
@with_appcontext
def rotate_key_command(email: str) -> None:
    session = db.session
    actor = _administrator(email)
    result = verify(session)
    if not result.ok:
        for problem in result.problems[:20]:
            click.echo(f"PROBLEM: {problem}", err=True)
        raise click.ClickException(
            "The audit log does not verify: find out why before replacing its key (a new key "
            "would seal whatever was changed). Nothing was changed."
        )
    made: list[str] = []
    try:
        with writing(session):
            made.append(rotate_key(session, actor.id))
    except BaseException:
        for kid in made:  # recorded nothing: the key must not look like one the log dropped
            forget_key(kid)
        raise
    kid = made[0]
    path = f"{current_app.instance_path}/{KEYRING}/{kid}"
    click.echo(f"The audit log's key is now {kid}, kept in {path}.")
    click.echo(
        f"The log's head is now {head(session)}: record it off the server (the evidence pack "
        "prints it too); `flask audit head --record` does so where COUNTERSIGN_AUDIT_HEAD_FILE "
        "is set."
    )
    click.echo(
        "Make a backup now (it holds the new key), and copy that file to every other server "
        "that runs the app: it cannot record anything without it."
    )


def _ranges(ids: list[int]) -> str:
    """1, 2, 3, 5 → "1-3, 5"."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
