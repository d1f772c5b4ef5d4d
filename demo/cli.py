"""``flask demo``: a made-up federation with a realistic spread of training, to try Countersign out
and to give reports and benchmarks something true to show."""

from __future__ import annotations

import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.orm import Session

from core.db import db, utcnow
from core.web import federation
from demo.build import (
    accounts_summary,
    build,
    count_people,
    sign_in_accounts,
    standings,
)
from demo.population import CAST, MIN_ORDINARY
from mfa.rules import first_sign_in_note
from people.demo import DEMO_DOMAIN
from training.cli import publish_all
from training.loader import ContentError
from training.marks import touch_everyone
from training.publishing import published_policies

MIN_PEOPLE = len(CAST) + MIN_ORDINARY
MAX_PEOPLE = 200_000

HELP = f"""Build a demonstration federation of N people at @{DEMO_DOMAIN}.

Every school and role, and a spread of training over the past 18 months: never started,
part-way, failed quizzes, trained, expired, and trained on an earlier version of the policy
(published for the purpose when there is none); social media accounts with their runners, some
flagged on the register. Everything is recorded as the app records it, so reports show what the
training rule says.

It brings the number of demo people up to N: a second run adds only the people missing, and adds
nothing when there are N already. Nobody is changed or removed. It refuses to run when the
database holds anyone who is not a demo person, unless --force.
"""


@click.command("demo", help=HELP)
@click.option(
    "--people",
    "target",
    type=click.IntRange(MIN_PEOPLE, MAX_PEOPLE),
    default=500,
    show_default=True,
    help="How many demo people the database should hold.",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="The same seed gives the same people."
)
@click.option(
    "--force", is_flag=True, help="Add demo people even though other people are in the database."
)
@with_appcontext
def demo_command(target: int, seed: int, force: bool) -> None:
    started = time.perf_counter()
    session = db.session
    now = utcnow()
    existing, others, example = count_people(session)
    if others and not force:
        session.rollback()
        who = "person who is not a demo person" if others == 1 else "people who are not demo people"
        raise click.ClickException(
            f"The database holds {others:,} {who} (for example {example}). The demo would mix "
            "made-up training records with real ones. Use a new database, or pass --force to add "
            "demo people anyway."
        )
    try:
        if not published_policies(session):
            for line in publish_all():
                click.echo(line)
        result = build(
            session,
            target=target,
            seed=seed,
            now=now,
            content_dir=Path(current_app.config["CONTENT_DIR"]),
            federation=federation(),
            backdate=others == 0,
        )
        accounts = sign_in_accounts(session)
        if result.added:
            touch_everyone(session)  # the worker brings everyone's status up to date
        session.commit()
    except ContentError as exc:
        session.rollback()
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("The content has problems; fix them and run again.")
    except BaseException:
        session.rollback()
        raise
    if result.added:
        click.echo(
            f"Demo federation: {result.existing + result.added:,} demo people "
            f"({result.added:,} added now, {result.existing:,} there before)."
        )
        click.echo(
            f"Recorded for them: {result.receipts:,} modules read, {result.attempts:,} quiz "
            f"attempts ({result.failed:,} failed), {result.acknowledgements:,} signatures."
        )
    else:
        click.echo(
            f"The database already holds {result.existing:,} demo people (asked for {target:,}): "
            "nothing was added. `flask demo` only ever adds people; for a fresh demo, use a new "
            "database."
        )
    for note in result.notes:
        click.echo(f"Note: {note}")
    _echo_standings(session)
    _echo_accounts(session)
    if accounts:
        base = current_app.config["BASE_URL"].rstrip("/")
        click.echo(f"\nSign in at {base}/sign-in with these passwords, set just now:")
        for label, person, password in accounts:
            click.echo(f"  {label:<15} {person.name:<18} {person.email:<40} {password}")
        if note := first_sign_in_note(current_app.config):
            click.echo(note)
    if result.added and "certificates" in current_app.cli.commands:
        click.echo("\nCertificates for the new signatures: .venv/bin/flask certificates issue")
    click.echo(f"\nDone in {time.perf_counter() - started:.1f} s.")


def _echo_standings(session: Session) -> None:
    for table in standings(session, federation()):
        click.echo(
            f"\n{table.title}, version {table.version}: where everyone stands "
            "(people at two schools count under both)"
        )
        header = ["standing", "everyone", *table.columns]
        widths = [14] + [max(10, len(c) + 3) for c in header[1:]]
        click.echo(_row(header, widths))
        for standing, by_column in table.counts.items():
            if table.totals[standing]:
                counts = [table.totals[standing]] + [by_column[c] for c in table.columns]
                label = standing.replace("_", " ")
                click.echo(_row([label, *(f"{n:,}" for n in counts)], widths))


def _row(cells: list[str], widths: list[int]) -> str:
    """The first cell on the left, the numbers on the right of their columns."""
    rest = zip(cells[1:], widths[1:], strict=True)
    return "  " + cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in rest)


def _echo_accounts(session: Session) -> None:
    summary = accounts_summary(session)
    if not summary.on_register and not summary.waiting:
        return
    click.echo(
        f"\nSocial media accounts: {summary.on_register} on the register, "
        f"{len(summary.attention)} needing attention" + (":" if summary.attention else ".")
    )
    for line in summary.attention:
        click.echo(f"  {line}")
    if summary.waiting:
        click.echo(
            f"  {summary.waiting} application{'s' if summary.waiting != 1 else ''} waiting "
            "for a decision."
        )
