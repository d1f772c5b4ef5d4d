"""Question banks, drawing, grading and attempts (see the quiz issue)."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the quiz pages and ``flask quiz``."""
    from people.personal_data import register_personal_data
    from quizzes.cli import quiz_cli
    from quizzes.privacy import quiz_attempts
    from quizzes.views import quiz_bp

    app.register_blueprint(quiz_bp)
    app.cli.add_command(quiz_cli)
    # Attempts are evidence, kept under the pseudonymous id after erasure.
    register_personal_data(
        app, "quiz_attempts", tables=("quiz_attempt",), export=quiz_attempts, order=30
    )
