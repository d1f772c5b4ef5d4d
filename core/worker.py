"""``flask worker``: the one worker that delivers the outbox and does what time makes due."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from core import outbox


@click.command(
    "worker",
    help="Deliver what the outbox holds (webhooks, grades, xAPI, certificates, emails) and do "
    "what falls due with time (expiries, reminders), until stopped. --once does one pass, for cron.",
)
@click.option("--once", is_flag=True, help="One pass, then exit (run it from cron every minute).")
@click.option("--poll", default=5.0, show_default=True, help="Seconds between passes when idle.")
@with_appcontext
def worker_command(once: bool, poll: float) -> None:
    if once:
        result = outbox.run_once()
        click.echo(f"{result.done} done, {result.retrying} to retry, {result.gave_up} given up.")
        return
    outbox.run_forever(current_app._get_current_object(), poll)
