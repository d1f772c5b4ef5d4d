"""Reminders by email: learners, account runners, SLT and governors, and the policy owner."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the administrators' page, the email topic, "send now" and the hourly job."""
    from core import outbox
    from people.personal_data import register_personal_data
    from reminders import privacy, rules, sending
    from reminders.views import account_bp, reminders_bp

    app.register_blueprint(reminders_bp)
    app.register_blueprint(account_bp)
    outbox.topic(app, rules.EMAIL, sending.send, remote=True)
    outbox.topic(app, rules.RUN, lambda session, message: rules.run_now(session, message),
                 remote=True)  # fmt: skip
    # Hourly: a reminder falls due by the day; quiet hours move what falls due at night.
    outbox.periodic(app, rules.JOB, rules.run, timedelta(hours=1))
    register_personal_data(
        app, "reminders", tables=("reminder", "digest_choice"), export=privacy.reminders,
        erase=privacy.erase_reminders, order=160,
    )  # fmt: skip
