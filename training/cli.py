"""``flask content check|publish`` and ``flask setup``."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from core.db import db, utcnow
from core.migrate import db_cli, upgrade
from quizzes.lint import giveaways
from training.loader import ContentError, load_all
from training.publishing import publish

__all__ = ["content_cli", "db_cli", "setup_command"]


def _content_dir() -> Path:
    return Path(current_app.config["CONTENT_DIR"])


@click.group("content", help="Check and publish the policy content in the content folder.")
def content_cli() -> None:
    pass


@content_cli.command("check", help="Validate all content; print every problem with file and line.")
@with_appcontext
def check_command() -> None:
    try:
        policies = load_all(_content_dir())
    except ContentError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s) found; nothing was changed.")
    warnings = 0
    for policy in policies:
        questions = sum(len(m.bank.questions) for m in policy.modules if m.bank)
        quizzes = sum(1 for m in policy.modules if m.bank)
        click.echo(
            f"{policy.slug}: '{policy.title}' version {policy.version}, "
            f"{len(policy.modules)} modules ({quizzes} with quizzes, {questions} questions), "
            f"audiences: {', '.join(policy.audiences)}"
        )
        found = giveaways(m.bank for m in policy.modules if m.bank)
        for warning in found:
            click.echo(f"warning: {warning}", err=True)
        warnings += len(found)
    if warnings:
        click.echo(
            f"Content is valid; {warnings} warning(s) about answers a learner could guess "
            "without reading (see above)."
        )
    else:
        click.echo("Content is valid.")


def publish_all() -> list[str]:
    """Publish every policy; returns a line per policy saying what happened."""
    policies = load_all(_content_dir())
    lines = []
    session = db.session
    try:
        results = [publish(session, source) for source in policies]
        lines = [result.describe(utcnow().date()) for result in results]
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return lines


@content_cli.command("publish", help="Record changed content as a new policy version.")
@with_appcontext
def publish_command() -> None:
    try:
        lines = publish_all()
    except ContentError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("Nothing was published.")
    for line in lines:
        click.echo(line)


@click.command(
    "setup",
    help="Migrate the database and publish content. With --demo, also seed one demo person per "
    "role when the database has no people (what `make run` does; never on a real school's server).",
)
@click.option(
    "--demo", is_flag=True, help="Seed demo people, with printed passwords, into an empty database."
)
@with_appcontext
def setup_command(demo: bool) -> None:
    from people.demo import no_one_can_sign_in, seed_demo

    upgrade()
    try:
        for line in publish_all():
            click.echo(line)
    except ContentError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("The content has problems; fix them and run again.")
    if demo:
        seed_demo(echo=click.echo)
    elif no_one_can_sign_in():
        click.echo(
            "Nobody can sign in yet. Add the first administrator, who is given a link to set "
            "their password:\n  flask people add --name 'Their Name' --email them@school.example "
            "--roles 'staff;admin'"
        )
