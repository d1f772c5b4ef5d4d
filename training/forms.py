from __future__ import annotations

from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length

from core.forms import Form


class ReadForm(Form):
    """ "I have read this module": CSRF only."""


class AcknowledgeForm(Form):
    confirm = BooleanField(
        "I agree with the declaration above",
        validators=[DataRequired("Tick the box to confirm the declaration.")],
    )
    full_name = StringField(
        "Your full name",
        validators=[DataRequired("Type your full name to sign."), Length(max=200)],
        description="Typing your name is your signature. If the name shown is wrong, ask your "
        "administrator to correct it.",
    )
