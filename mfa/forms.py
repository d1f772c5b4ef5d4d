"""The second factor's forms: a code, a recovery code, or a passkey's answer from the browser."""

from __future__ import annotations

from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length

from core.forms import Form


class CodeForm(Form):
    code = StringField(
        "Code from your authenticator app",
        description="The 6-digit code the app shows now.",
        validators=[
            DataRequired("Enter the 6-digit code from your authenticator app."),
            Length(max=20, message="Enter the 6-digit code from your authenticator app."),
        ],
    )


class RecoveryForm(Form):
    recovery_code = StringField(
        "Recovery code",
        description="One of the codes you saved when you set up your second factor.",
        validators=[
            DataRequired("Enter one of your recovery codes."),
            Length(max=60, message="A recovery code is 24 letters and digits."),
        ],
    )


class PasskeyForm(Form):
    # Filled in by passkeys.js with the browser's answer (JSON); without JavaScript, empty.
    credential = HiddenField(
        "Passkey",
        validators=[
            DataRequired("Your browser did not give an answer from a passkey. Try again."),
            Length(max=16000, message="That answer from the browser is too long."),
        ],
    )
