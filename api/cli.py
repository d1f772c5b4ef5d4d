"""``flask tokens create|list|revoke``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from api.models import ApiToken
from api.tokens import SCOPES, TokenError, create_token, revoke
from api.webhooks import create_webhook, deliver_due, detect_changes
from core.db import db, writing


@click.group("tokens", help="API tokens for other systems.")
def tokens_cli() -> None:
    pass


@tokens_cli.command("create", help="Create a token and print it once.")
@click.option("--name", required=True, help="Who uses it, e.g. 'Approvals workflow'.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(sorted(SCOPES)))
@with_appcontext
def create_command(name: str, scopes: tuple[str, ...]) -> None:
    try:
        new = create_token(db.session, name, list(scopes))
    except TokenError as exc:
        raise click.ClickException(str(exc))
    db.session.commit()
    click.echo(f"Token {new.token.id} for {new.token.name!r} ({', '.join(new.token.scopes)}).")
    click.echo("Copy it now; it is not shown again:")
    click.echo(new.secret)


@tokens_cli.command("list", help="List tokens (never their secrets).")
@with_appcontext
def list_command() -> None:
    for token in db.session.scalars(select(ApiToken).order_by(ApiToken.id)):
        state = f"revoked {token.revoked_at:%Y-%m-%d}" if token.revoked_at else "active"
        used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
        click.echo(
            f"{token.id}\t{token.prefix}…\t{token.name}\t{','.join(token.scopes)}\t{state}\tlast used {used}"
        )


@tokens_cli.command("revoke", help="Revoke a token by its number.")
@click.argument("token_id", type=int)
@with_appcontext
def revoke_command(token_id: int) -> None:
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise click.ClickException(f"There is no token {token_id}.")
    revoke(token)
    db.session.commit()
    click.echo(f"Token {token_id} ({token.name}) is revoked.")


@click.group("webhooks", help="Webhooks: events for other systems when trained status changes.")
def webhooks_cli() -> None:
    pass


@webhooks_cli.command("add", help="Register a URL; prints the secret that signs its events.")
@click.argument("url")
@with_appcontext
def add_webhook(url: str) -> None:
    try:
        hook = create_webhook(db.session, url, None)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    db.session.commit()
    click.echo(f"Webhook {hook.id} → {hook.url}\nSigning secret (HMAC-SHA256): {hook.secret}")


@webhooks_cli.command(
    "run", help="Notice changes (expiries too) and deliver what is due. Run from cron."
)
@with_appcontext
def run_webhooks() -> None:
    with writing(db.session):
        queued = detect_changes(db.session, None)
    delivered = deliver_due(db.session)
    click.echo(f"{queued} new events queued, {delivered} deliveries made.")
