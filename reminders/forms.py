from __future__ import annotations

from wtforms import BooleanField, IntegerField
from wtforms.validators import InputRequired, NumberRange

from core.forms import Form


def _days(label: str, hint: str) -> IntegerField:
    return IntegerField(
        label, description=hint,
        validators=[InputRequired(message=f"Enter {label.lower()}, in days."),
                    NumberRange(1, 365, message="Enter a number of days from 1 to 365.")],
    )  # fmt: skip


def _hour(label: str) -> IntegerField:
    return IntegerField(
        label, description="An hour from 0 to 23, in the school's time zone.",
        validators=[InputRequired(message=f"Enter {label.lower()}."),
                    NumberRange(0, 23, message="Enter an hour from 0 to 23.")],
    )  # fmt: skip


class SettingsForm(Form):
    first_after_days = _days("First reminder after", "Days after the training became due.")
    every_days = _days("Then every", "Days between reminders while the training is not done.")
    max_times = IntegerField(
        "At most", description="How many reminders a person gets for one version (0 for none).",
        validators=[InputRequired(message="Enter how many reminders at most."),
                    NumberRange(0, 20, message="Enter a number from 0 to 20.")],
    )  # fmt: skip
    quiet_from = _hour("Quiet hours start at")
    quiet_until = _hour("Quiet hours end at")
    not_started_on = BooleanField("Remind learners whose training is not done")
    expiring_on = BooleanField("Tell learners 30 and 7 days before their training expires")
    expired_on = BooleanField("Tell learners when their training has expired")
    runners_on = BooleanField("Tell account runners whose training lapsed which account is at risk")
    digest_on = BooleanField("Send SLT and governors the weekly digest (each can switch it off)")
    owner_on = BooleanField("Tell the policy owner 30 days before the policy's review date")


class DigestForm(Form):
    weekly_digest = BooleanField("Email me the weekly digest")
