"""A demonstration federation: realistic people and training records, made by ``flask demo``."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register ``flask demo``."""
    from demo.cli import demo_command

    app.cli.add_command(demo_command)
