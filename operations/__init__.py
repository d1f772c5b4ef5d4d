"""Running Countersign for real: backups that restore anywhere, and the database roles."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register ``flask backup`` and ``flask restore``."""
    from operations.cli import backup_command, restore_command

    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
