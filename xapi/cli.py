"""``flask xapi status`` (statements are sent by ``flask worker``)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from core.db import db
from xapi.outbox import Lrs, counts


@click.group("xapi", help="xAPI statements for a Learning Record Store.")
def xapi_cli() -> None:
    pass


@xapi_cli.command("status", help="Count statements sent, waiting and given up.")
@with_appcontext
def status_command() -> None:
    lrs = Lrs.from_config(current_app.config)
    click.echo(f"LRS: {lrs.endpoint if lrs else 'not configured (xAPI is off)'}")
    now = counts(db.session)
    click.echo(f"sent: {now.sent}")
    click.echo(f"waiting (not yet tried): {now.pending}")
    click.echo(f"waiting (failed, will retry): {now.failing}")
    click.echo(f"given up: {now.given_up}")
