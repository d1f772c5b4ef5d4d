"""Certificates of training, rendered with WeasyPrint (see the reports and certificates issue)."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the certificate pages, ``flask certificates`` and issuing on status changes."""
    from certificates import issuing, privacy
    from certificates.cli import certificates_cli
    from certificates.views import certificates_bp
    from people.personal_data import register_personal_data

    app.register_blueprint(certificates_bp)
    app.cli.add_command(certificates_cli)
    issuing.init_app(app)
    register_personal_data(
        app, "certificates", tables=("certificate",), export=privacy.certificates,
        erase=privacy.erase_certificates, evidence=privacy.certificates_to_pseudonymise, order=90,
    )  # fmt: skip
