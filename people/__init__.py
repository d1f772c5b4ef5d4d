"""People, their roles and schools, sign-in, invitations and the administrator's people pages."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the sign-in and people pages, ``flask people``, who a session belongs to, and
    the profile and sign-in attempts in the personal data."""
    from core.web import login_manager
    from people.auth import load_user
    from people.cli import people_cli
    from people.personal_data import register_personal_data
    from people.privacy import erase_sign_in_attempts, profile, sign_in_attempts
    from people.views import admin_bp, auth_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(admin_bp)
    app.cli.add_command(people_cli)
    login_manager.user_loader(load_user)
    # The person's own row is pseudonymised last, by ``people.privacy.erase_person`` itself.
    register_personal_data(
        app, "profile", tables=("person", "person_role", "person_school"), export=profile, order=0
    )
    register_personal_data(
        app, "sign_in_attempts", tables=("sign_in_attempt",), export=sign_in_attempts,
        erase=erase_sign_in_attempts, order=40,
    )  # fmt: skip
