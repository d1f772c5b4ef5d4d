"""Social-media account applications, SLT decisions gated on training, the account register."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the applications, decisions and register pages, and their personal data."""
    from approvals import privacy
    from approvals.views import approvals_bp
    from people.personal_data import register_personal_data

    app.register_blueprint(approvals_bp)
    register_personal_data(
        app, "account_applications",
        tables=("account_application", "application_runner", "application_decision"),
        export=privacy.account_applications, erase=privacy.erase,
        evidence=privacy.evidence_to_pseudonymise, order=100,
    )  # fmt: skip
    # The register's entries are pseudonymised with the applications and decisions, above.
    register_personal_data(
        app, "account_register", tables=("social_account", "account_runner"),
        export=privacy.account_register, order=110,
    )  # fmt: skip
