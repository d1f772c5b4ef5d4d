"""The tamper-evident audit log: security-relevant events, hash-chained and append-only."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the audit pages and ``flask audit``."""
    from audit.cli import audit_cli
    from audit.views import audit_bp
    from people.personal_data import register_not_personal

    app.register_blueprint(audit_bp)
    app.cli.add_command(audit_cli)
    register_not_personal(
        app, "evidence_erasure", "a person's id, present only inside the transaction that erases "
        "them",
    )  # fmt: skip
