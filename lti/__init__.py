"""LTI 1.3: launches from a learning platform, linked accounts and grades sent back."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the LTI pages, ``flask lti`` and grade return on status changes."""
    from core.sessions import EMBEDDING
    from core.web import csrf
    from lti import grades, privacy
    from lti.cli import lti_cli
    from lti.embedding import embedded_in
    from lti.views import lti_bp
    from people.personal_data import register_not_personal, register_personal_data

    app.register_blueprint(lti_bp)
    # A launch's session is shown in the platform's frame: its cookie and framing follow.
    app.extensions[EMBEDDING] = embedded_in
    # A platform's login and launch come from its own pages: state, nonce and signature guard them.
    csrf.exempt("lti.views.login")
    csrf.exempt("lti.views.launch")
    app.cli.add_command(lti_cli)
    grades.init_app(app)
    register_personal_data(
        app, "learning_platform_accounts",
        tables=("lti_identity", "lti_grade_link", "lti_link_request"),
        export=privacy.learning_platform_accounts, erase=privacy.erase, order=50,
    )  # fmt: skip
    register_not_personal(
        app, "lti_platform", "which administrator registered a platform: the school's "
        "configuration record, by id only",
    )  # fmt: skip
