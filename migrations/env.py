"""Alembic environment: runs on the connection the app hands over (see core/migrate.py)."""

from alembic import context

import api.models  # noqa: F401  (registers tables on the metadata)
import approvals.models  # noqa: F401
import audit.models  # noqa: F401
import certificates.models  # noqa: F401
import core.mail  # noqa: F401  (mail_failure)
import lti.models  # noqa: F401
import people.models  # noqa: F401
import quizzes.models  # noqa: F401
import training.models  # noqa: F401
import xapi.models  # noqa: F401
from core.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from app import create_app
        from core.db import db

        with create_app().app_context(), db.engine.begin() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
