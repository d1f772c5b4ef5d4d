"""Countersign: policy training, quizzes, signed acknowledgement, and "is this person trained?".

``flask`` finds :func:`create_app` here; gunicorn serves the app built in ``wsgi.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

from flask import Flask

from core import config, outbox, web
from core.db import db

# Each package registers its own pages, commands, CSRF exemptions and listeners in its
# ``init_app``. The order is the order of registration: the people pages come first, and the
# status listeners run in this order after a change.
PACKAGES = (
    "people", "training", "quizzes", "api", "approvals", "certificates", "reports", "audit",
    "lti", "xapi", "reminders", "mfa", "operations", "demo",
)  # fmt: skip


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = web.Countersign(
        __name__,
        instance_relative_config=True,
        template_folder="core/templates",
        static_folder="core/static",
    )
    config.load(app, test_config)
    config.protect_files(app)
    db.init_app(app)
    web.init_app(app)
    outbox.init_app(app)  # the one outbox; packages register their topics on it
    for name in PACKAGES:
        importlib.import_module(name).init_app(app)
    from core.worker import worker_command

    app.cli.add_command(worker_command)
    return app
