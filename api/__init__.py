"""The JSON API under /api/v1: token authentication, one error shape, an OpenAPI document."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the API, its token and webhook pages and commands, and the status listeners."""
    from api import privacy, webhooks
    from api.admin import tokens_bp, webhooks_bp
    from api.cli import tokens_cli, webhooks_cli
    from api.views import api_bp
    from core.web import csrf
    from people.personal_data import register_personal_data

    app.register_blueprint(api_bp)
    app.register_blueprint(tokens_bp)
    app.register_blueprint(webhooks_bp)
    csrf.exempt(api_bp)  # other systems authenticate with a bearer token, not a session
    app.cli.add_command(tokens_cli)
    app.cli.add_command(webhooks_cli)
    webhooks.init_app(app)
    register_personal_data(
        app, "api_tokens_created", tables=("api_token",), export=privacy.api_tokens_created,
        order=120,
    )  # fmt: skip
    register_personal_data(
        app, "webhooks_created", tables=("webhook",), export=privacy.webhooks_created, order=130
    )
    # The outbox is core's, but what it holds about a person (webhook events naming them, and the
    # record of every message about them) is listed and redacted here, where it is sent from.
    register_personal_data(
        app, "webhook_deliveries", tables=("outbox",), export=privacy.messages_about,
        erase=privacy.erase_from_deliveries, order=140,
    )  # fmt: skip
