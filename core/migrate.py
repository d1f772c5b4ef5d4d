"""Schema changes come only from the Alembic revisions in ``migrations/``."""

from __future__ import annotations

import click
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import Connection

from core.config import ROOT
from core.db import db, grant_app_role, migration_engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def upgrade(revision: str = "head") -> None:
    """Bring the app's database up to ``revision`` as the tables' owner, then give the
    application role (where there is one) its rights on whatever the migrations made."""
    cfg = alembic_config()
    engine = migration_engine(current_app)
    role = str(current_app.config.get("DATABASE_APP_ROLE") or "")
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            if role and connection.dialect.name == "postgresql":
                grant_app_role(connection, role)
                _revoke_as_migrations_say(cfg, connection, role)
    finally:
        if engine is not db.engine:
            engine.dispose()


def _revoke_as_migrations_say(cfg: Config, connection: Connection, role: str) -> None:
    """A migration that takes rights away from the application role (rows it may add but never
    change or remove) says so in a ``revoke_changes(bind, role)`` function; each is applied again
    after the grants, so granting rights on new tables never gives those back."""
    current = MigrationContext.configure(connection).get_current_revision()
    for script in ScriptDirectory.from_config(cfg).iterate_revisions(current, "base"):
        revoke = getattr(script.module, "revoke_changes", None)
        if revoke is not None:
            revoke(connection, role)


@click.group("db", help="Database schema (Alembic migrations).")
def db_cli() -> None:
    pass


@db_cli.command("upgrade", help="Apply every migration not yet applied.")
@click.argument("revision", default="head")
@with_appcontext
def upgrade_command(revision: str) -> None:
    upgrade(revision)
    click.echo(f"Database is at the latest schema ({_safe_url()}).")


@db_cli.command("revision", help="Write a new migration from the models (for developers).")
@click.option("-m", "--message", required=True)
@with_appcontext
def revision_command(message: str) -> None:
    cfg = alembic_config()
    with db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.revision(cfg, message=message, autogenerate=True)


def _safe_url() -> str:
    return db.engine.url.render_as_string(hide_password=True) if current_app else ""
