"""``flask certificates issue``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from certificates.issuing import issue_to_everyone, render_missing
from core.db import db


@click.group("certificates", help="Certificates of training.")
def certificates_cli() -> None:
    pass


@certificates_cli.command(
    "issue",
    help="Issue a certificate to everyone trained whose signature has none yet, then render any "
    "PDF not yet stored. Safe to run at any time, e.g. from cron, or after an upgrade.",
)
@click.option(
    "--no-render",
    is_flag=True,
    help="Only issue; each PDF is then rendered on first download (about a tenth of a second each).",
)
@with_appcontext
def issue_command(no_render: bool) -> None:
    issued = issue_to_everyone(db.session)
    rendered, failed = (0, 0) if no_render else render_missing(db.session)
    click.echo(f"{issued} certificate(s) issued, {rendered} PDF(s) rendered.")
    if failed:
        raise click.ClickException(f"{failed} PDF(s) could not be rendered; see the log above.")
