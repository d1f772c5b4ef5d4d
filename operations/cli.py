"""``flask backup`` and ``flask restore``."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from audit import anchor
from core.db import db, migration_engine
from core.migrate import upgrade
from operations.backup import BackupError, backup, default_name, restore


@click.command(
    "backup",
    help="Write a consistent backup: every table, read in one transaction, plus the instance key "
    "files the records depend on (audit key, secret key, LTI private key) and a manifest. The file "
    "is made readable by its owner only: it holds those keys.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it (never overwritten). Default: countersign-backup-TIME.tar.gz here.",
)
@with_appcontext
def backup_command(output: Path | None) -> None:
    try:
        summary = backup(current_app, db.engine, output or Path(default_name()))
    except BackupError as exc:
        raise click.ClickException(str(exc))
    click.echo(
        f"Backup written to {summary.path}: {sum(summary.rows.values()):,} rows in "
        f"{len(summary.rows)} tables, schema revision {summary.revision}, audit head "
        f"{summary.head or 'none (empty log)'}."
    )
    if summary.audit_problems:
        click.echo(
            f"WARNING: `flask audit verify` reports {len(summary.audit_problems)} problem(s) in the "
            "audit log now; the backup keeps the records as they are, so an investigation can use it.",
            err=True,
        )
    elif summary.audit_problems is None:
        click.echo("WARNING: the audit log could not be checked: its key is missing.", err=True)
    if summary.keys:
        click.echo(
            f"It CONTAINS SECRETS: {', '.join(summary.keys)}. Anyone holding it can sign in as "
            "anyone and forge audit rows: keep it encrypted, off this server, readable only by "
            "whoever restores."
        )
    click.echo(
        f"Authenticated with the backup key {summary.backup_key_fingerprint} "
        f"({summary.backup_key}), which is not in the backup: keep a copy of it apart from the "
        "backups; restoring needs it."
    )
    for label in summary.keys_not_included:
        click.echo(
            f"Not included: {label}, set in the environment. Keep it with your backups: the "
            "records cannot be checked without it."
        )


@click.command(
    "restore",
    help="Bring a backup made by this version back into an EMPTY database (a database without "
    "tables is migrated first) and its keys into the instance folder, all or nothing. The file "
    "must match the backup key (COUNTERSIGN_BACKUP_KEY or COUNTERSIGN_BACKUP_KEY_FILE), and the "
    "restored audit log must verify; otherwise nothing is restored.",
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force-keys",
    is_flag=True,
    help="Replace instance key files that differ from the backup's (each is kept beside it as "
    "NAME.replaced-TIME).",
)
@click.option(
    "--accept-problems",
    is_flag=True,
    help="Restore even when the restored audit log does not verify (the problems are listed): "
    "for an investigation of a log that was already tampered with.",
)
@click.option(
    "--heads",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of heads recorded by `flask audit head --record` (default: "
    "COUNTERSIGN_AUDIT_HEAD_FILE, when set): each one up to the backup's end must be in the "
    "restored log.",
)
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="Skip the check against the backup key: only for a backup made before backups were "
    "authenticated, whose whereabouts you know.",
)
@with_appcontext
def restore_command(
    file: Path, force_keys: bool, accept_problems: bool, heads: Path | None, unauthenticated: bool
) -> None:
    heads = heads or anchor.head_file(current_app)
    if heads is None:
        click.echo(
            "WARNING: no recorded heads to compare with (--heads, or COUNTERSIGN_AUDIT_HEAD_FILE): "
            "a backup of a rewritten log that carries a valid authentication code would restore.",
            err=True,
        )
    engine = migration_engine(current_app)
    if unauthenticated:
        click.echo(
            "WARNING: not checking the file against the backup key (--unauthenticated): anything "
            "in it may have been changed by whoever held it.",
            err=True,
        )
    try:
        result = restore(
            current_app,
            engine,
            file,
            force_keys=force_keys,
            migrate=upgrade,
            accept_problems=accept_problems,
            unauthenticated=unauthenticated,
            heads=heads,
        )
    except BackupError as exc:
        raise click.ClickException(str(exc))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise click.ClickException(
            f"The database refused the backup's rows ({reason}). Nothing was restored."
        )
    finally:
        if engine is not db.engine:
            engine.dispose()
    if result.migrated:
        click.echo(f"Built the schema at revision {result.revision}.")
    if result.authenticated_by:
        click.echo(f"The file matches the backup key {result.authenticated_by}.")
    # Only what this restore's own walk of the chain found: the manifest's words prove nothing.
    checked = (
        "the audit log verifies"
        if not result.audit_problems
        else f"the audit log does NOT verify: {len(result.audit_problems)} problem(s), restored "
        "as they are (--accept-problems)"
    )
    click.echo(
        f"Restored {sum(result.rows.values()):,} rows in {len(result.rows)} tables; {checked}, "
        f"head {result.head or 'none (empty log)'}."
    )
    for problem in result.audit_problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if result.claimed_problems is not None and result.claimed_problems != result.audit_problems:
        click.echo(
            f"WARNING: the backup's manifest says the log had {len(result.claimed_problems)} "
            "problem(s) when it was made, not what this restore found.",
            err=True,
        )
    if result.keys_written:
        click.echo(f"Keys written to the instance folder: {', '.join(result.keys_written)}.")
    for name in result.keys_kept:
        click.echo(
            f"Kept this instance's own {name}: it signs only sessions and emailed links, so links "
            "sent before the backup no longer work (--force-keys restores the backup's)."
        )
    for aside in result.keys_set_aside:
        click.echo(f"The key that was there is kept as {aside}.")
    click.echo("Next: `flask audit verify`, then start the app.")
