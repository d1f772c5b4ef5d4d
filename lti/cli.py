"""``flask lti add-platform|platforms|urls`` (scores are posted by ``flask worker``)."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from core.db import db
from core.web import federation
from lti.accounts import DEFAULT_ROLE_MAP, parse_role_map
from lti.models import LtiPlatform
from lti.registry import PlatformData, PlatformError, register_platform
from lti.views import tool_urls


@click.group("lti", help="Learning platforms that launch Countersign over LTI 1.3.")
def lti_cli() -> None:
    pass


@lti_cli.command("urls", help="Print the values to enter in the platform's tool configuration.")
@with_appcontext
def urls_command() -> None:
    with current_app.test_request_context():  # links are built on BASE_URL, not a request
        for label, url in tool_urls().items():
            click.echo(f"{label}: {url}")


@lti_cli.command("add-platform", help="Register a platform (its values come from its tool page).")
@click.option("--name", required=True, help="e.g. 'Ladysmith Moodle'.")
@click.option("--issuer", required=True, help="The platform ID, e.g. https://moodle.school.uk.")
@click.option("--client-id", required=True)
@click.option("--auth-login-url", required=True, help="Authentication request URL.")
@click.option("--auth-token-url", required=True, help="Access token URL.")
@click.option("--key-set-url", default="", help="Public keyset URL.")
@click.option("--key-set-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON key set, for a platform without a keyset URL.")  # fmt: skip
@click.option("--deployment", "deployments", multiple=True, required=True, help="Deployment ID.")
@click.option("--role", "roles", multiple=True,
              help="'LMS role = Countersign role' (repeat); the default table if none.")  # fmt: skip
@click.option("--school", default="", help="School code given to people a launch adds.")
@with_appcontext
def add_platform_command(
    name: str,
    issuer: str,
    client_id: str,
    auth_login_url: str,
    auth_token_url: str,
    key_set_url: str,
    key_set_file: Path | None,
    deployments: tuple[str, ...],
    roles: tuple[str, ...],
    school: str,
) -> None:
    try:
        role_map = parse_role_map("\n".join(roles)) if roles else dict(DEFAULT_ROLE_MAP)
        data = PlatformData(
            name, issuer, client_id, auth_login_url, auth_token_url, key_set_url,
            key_set_file.read_text() if key_set_file else "", deployments, role_map, school,
        )  # fmt: skip
        platform = register_platform(db.session, data, federation())
    except (PlatformError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    db.session.commit()
    click.echo(f"Registered platform {platform.id}: {platform.name} ({platform.issuer}).")


@lti_cli.command("platforms", help="List registered platforms.")
@with_appcontext
def platforms_command() -> None:
    for p in db.session.scalars(select(LtiPlatform).order_by(LtiPlatform.id)):
        state = "active" if p.active else "switched off"
        click.echo(
            f"{p.id}\t{p.name}\t{p.issuer}\t{p.client_id}\t{','.join(p.deployment_ids)}\t{state}"
        )
