"""A second factor after the password: authenticator apps, passkeys and recovery codes."""

from __future__ import annotations

from flask import Flask

from audit.log import EVENTS

AUDIT_EVENTS = {
    "sign_in.password_accepted": "Password right, second factor asked for",
    "second_factor.enrolled": "Second factor set up",
    "second_factor.removed": "Second factor removed",
    "second_factor.recovery_used": "Recovery code used to sign in",
    "second_factor.codes_renewed": "New recovery codes made",
    "second_factor.reset": "Second factor reset by an administrator",
}


def init_app(app: Flask) -> None:
    """Register the pages, the audit events and the personal data; check the setting at start-up."""
    from mfa import privacy
    from mfa.rules import mfa_roles
    from mfa.views import methods_of, mfa_bp
    from people.personal_data import register_personal_data

    mfa_roles(app.config)  # an unknown role name stops the app here, not at someone's sign-in
    for event, words in AUDIT_EVENTS.items():
        EVENTS.setdefault(event, words)
    app.register_blueprint(mfa_bp)
    app.add_template_global(methods_of, "second_factor_methods")
    register_personal_data(
        app, "second_factor", tables=("second_factor", "recovery_code", "passkey_challenge"),
        export=privacy.second_factor, erase=privacy.erase, order=60,
    )  # fmt: skip
