"""Countersign: policy training, quizzes, signed acknowledgement, and "is this person trained?"."""

from __future__ import annotations

from typing import Any

from flask import Flask

from core import config, outbox, web
from core.db import db


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="core/templates",
        static_folder="core/static",
    )
    config.load(app, test_config)
    config.protect_files(app)
    db.init_app(app)
    web.init_app(app)

    from api import webhooks
    from api.admin import tokens_bp, webhooks_bp
    from api.cli import tokens_cli, webhooks_cli
    from api.views import api_bp
    from approvals.views import approvals_bp
    from audit.cli import audit_cli
    from audit.views import audit_bp
    from certificates import issuing as certificate_issuing
    from certificates.cli import certificates_cli
    from certificates.views import certificates_bp
    from core.worker import worker_command
    from demo.cli import demo_command
    from lti import grades as lti_grades
    from lti.cli import lti_cli
    from lti.views import lti_bp
    from mfa import init_app as second_factor_init_app
    from operations.cli import backup_command, restore_command
    from people.cli import people_cli
    from people.views import admin_bp, auth_bp
    from quizzes.cli import quiz_cli
    from quizzes.views import quiz_bp
    from reports.views import reports_bp
    from training import status_store
    from training.cli import content_cli, db_cli, setup_command
    from training.views import training_bp
    from xapi import outbox as xapi_outbox
    from xapi.cli import xapi_cli
    from xapi.views import xapi_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(training_bp)
    app.register_blueprint(quiz_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(tokens_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(approvals_bp)
    app.register_blueprint(certificates_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(audit_bp)
    app.register_blueprint(lti_bp)
    app.register_blueprint(xapi_bp)
    web.csrf.exempt(api_bp)  # other systems authenticate with a bearer token, not a session
    # A platform's login and launch come from its own pages: state, nonce and signature guard them.
    web.csrf.exempt("lti.views.login")
    web.csrf.exempt("lti.views.launch")
    app.cli.add_command(db_cli)
    app.cli.add_command(content_cli)
    app.cli.add_command(people_cli)
    app.cli.add_command(quiz_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(webhooks_cli)
    app.cli.add_command(demo_command)
    app.cli.add_command(certificates_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(lti_cli)
    app.cli.add_command(xapi_cli)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    webhooks.init_app(app)
    outbox.init_app(app)
    status_store.init_app(app)
    certificate_issuing.init_app(app)
    lti_grades.init_app(app)
    xapi_outbox.init_app(app)
    second_factor_init_app(app)
    app.cli.add_command(setup_command)
    app.cli.add_command(worker_command)
    return app


app = create_app()
