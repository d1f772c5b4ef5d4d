"""``flask tokens create|list|revoke``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from api.models import ApiToken
from api.tokens import SCOPES, TokenError, create_token, revoke
from core.db import db


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
