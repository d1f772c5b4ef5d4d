from __future__ import annotations

from wtforms import RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from approvals.rules import PLATFORMS, VISIBILITY
from core.forms import Form
from people.forms import MultiCheckboxField

PLATFORM_CHOICES = [SelectChoice("", "Choose a platform")] + [SelectChoice(p, p) for p in PLATFORMS]


def _required(message: str) -> list:
    return [DataRequired(message), Length(max=4000)]


class ApplicationForm(Form):
    name = StringField(
        "Name of the account",
        validators=[DataRequired("Give the account a name."), Length(max=200)],
        description="For example 'Junior school history' or 'Friends of Ladysmith Infants'.",
    )
    platform = SelectField("Platform", choices=PLATFORM_CHOICES,
                           validators=[DataRequired("Choose the platform.")])  # fmt: skip
    aim = TextAreaField(
        "The aim of the account", validators=_required("Say what the account is for.")
    )
    audience = TextAreaField(
        "The intended audience", validators=_required("Say who the account is for.")
    )
    promotion = TextAreaField(
        "How the account will be promoted",
        validators=_required("Say how people will hear about it."),
    )
    visibility = RadioField(
        "Will the account be open or private/closed?",
        choices=[SelectChoice(k, v) for k, v in VISIBILITY.items()],
        validators=[DataRequired("Say whether it will be open or private/closed.")],
    )
    runners = MultiCheckboxField(
        "Who will run the account",
        coerce=int,
        validators=[DataRequired("Choose who will run the account.")],
        description="At least two staff members. Volunteers and parents may help too. Everyone "
        "chosen must have completed the Social Media Policy training before SLT can approve.",
    )


class DecisionForm(Form):
    decision = RadioField(
        "Decision",
        choices=[SelectChoice("approve", "Approve"), SelectChoice("reject", "Reject")],
        validators=[DataRequired("Choose approve or reject.")],
    )
    reason = TextAreaField(
        "Reason", validators=[Length(max=2000)], description="Required when rejecting."
    )


class RecordAccountForm(Form):
    platform = SelectField("Platform", choices=PLATFORM_CHOICES,
                           validators=[DataRequired("Choose the platform.")])  # fmt: skip
    handle = StringField(
        "Handle or web address",
        validators=[DataRequired("Give the account's handle or web address."), Length(max=300)],
        description="For example @LadysmithHistory or https://facebook.com/…. Never the password: "
        "account credentials belong in the federation's password manager.",
    )


class TransferForm(Form):
    runners = MultiCheckboxField(
        "Runners from now on",
        coerce=int,
        validators=[DataRequired("Choose who will run the account.")],
        description="At least two staff members, all trained.",
    )


class CloseForm(Form):
    reason = TextAreaField(
        "Why is the account being closed?",
        validators=[DataRequired("Say why the account is being closed."), Length(max=2000)],
    )
