"""xAPI: each read, quiz attempt, acknowledgement and completion, sent to a Learning Record Store."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the xAPI pages, ``flask xapi``, the outbox's subscribers and sender, and the
    statements' part of the personal-data download and erasure."""
    from people.personal_data import register_personal_data
    from xapi import outbox, privacy
    from xapi.cli import xapi_cli
    from xapi.views import xapi_bp

    app.register_blueprint(xapi_bp)
    app.cli.add_command(xapi_cli)
    outbox.init_app(app)
    register_personal_data(
        app, "xapi_statements", tables=(), export=privacy.xapi_statements,
        erase=privacy.erase_statements, order=150,
    )  # fmt: skip
