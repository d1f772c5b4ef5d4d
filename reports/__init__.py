"""Reports for governors (read-only) and SLT: completion, who is where, exports, evidence packs."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the report pages."""
    from reports.views import reports_bp

    app.register_blueprint(reports_bp)
