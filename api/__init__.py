"""The JSON API under /api/v1: token authentication, one error shape, an OpenAPI document."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the API, its token and webhook pages and commands, and the status listeners."""
    from api import answers, privacy, webhooks
    from api.admin import tokens_bp, webhooks_bp
    from api.cli import tokens_cli, webhooks_cli
    from api.views import api_bp
    from core.web import csrf
    from people.personal_data import register_not_personal, register_personal_data

    app.register_blueprint(api_bp)
    app.register_blueprint(tokens_bp)
    app.register_blueprint(webhooks_bp)
    csrf.exempt(api_bp)  # other systems authenticate with a bearer token, not a session
    app.cli.add_command(tokens_cli)
    app.cli.add_command(webhooks_cli)
    webhooks.init_app(app)
    answers.init_app(app)
    register_personal_data(
        app, "stored_answers", tables=("precomputed_status",), erase=privacy.erase_stored_answers,
        order=70,
    )  # fmt: skip
    register_personal_data(
        app, "api_tokens_created", tables=("api_token",), export=privacy.api_tokens_created,
        order=120,
    )  # fmt: skip
    register_personal_data(
        app, "webhooks_created", tables=("webhook",), export=privacy.webhooks_created, order=130
    )
    register_personal_data(
        app, "webhook_deliveries", tables=(), erase=privacy.erase_from_deliveries, order=140
    )
    register_not_personal(
        app, "status_snapshot", "the standing last announced to webhooks: an id and a standing, "
        "derived from the evidence in the download, and nothing that names the person",
    )  # fmt: skip
