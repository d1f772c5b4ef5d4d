"""``flask tokens create|list|revoke``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from api.models import ApiToken
from api.tokens import MAX_LIFETIME_DAYS, SCOPES, TokenError, create_token, revoke
from api.webhooks import create_webhook
from core.db import db, utcnow


@click.group("tokens", help="API tokens for other systems.")
def tokens_cli() -> None:
    pass


@tokens_cli.command("create", help="Create a token and print it once.")
@click.option("--name", required=True, help="Who uses it, e.g. 'Approvals workflow'.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(sorted(SCOPES)))
@click.option(
    "--days", type=click.IntRange(1, MAX_LIFETIME_DAYS), default=MAX_LIFETIME_DAYS,
    show_default=True, help="Days until the token expires.",
)  # fmt: skip
@with_appcontext
def create_command(name: str, scopes: tuple[str, ...], days: int) -> None:
    try:
        new = create_token(db.session, name, list(scopes), days=days)
    except TokenError as exc:
        raise click.ClickException(str(exc))
    db.session.commit()
    click.echo(
        f"Token {new.token.id} for {new.token.name!r} ({', '.join(new.token.scopes)}), "
        f"expires {new.token.expires_at:%Y-%m-%d}."
    )
    click.echo("Copy it now; it is not shown again:")
    click.echo(new.secret)


@tokens_cli.command("list", help="List tokens (never their secrets).")
@with_appcontext
def list_command() -> None:
    for token in db.session.scalars(select(ApiToken).order_by(ApiToken.id)):
        if token.revoked_at:
            state = f"revoked {token.revoked_at:%Y-%m-%d}"
        elif token.expires_at <= utcnow():
            state = f"expired {token.expires_at:%Y-%m-%d}"
        else:
            state = f"active until {token.expires_at:%Y-%m-%d}"
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
