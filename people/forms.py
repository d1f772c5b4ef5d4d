from __future__ import annotations

from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import EmailField, PasswordField, SelectMultipleField, StringField, widgets
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Email, EqualTo, Length

from core.forms import Form
from people.roles import ROLES
from people.service import MIN_PASSWORD_LENGTH


class MultiCheckboxField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class SignInForm(Form):
    email = EmailField("Email address", validators=[DataRequired("Enter your email address.")])
    password = PasswordField("Password", validators=[DataRequired("Enter your password.")])


class ForgotPasswordForm(Form):
    email = EmailField(
        "Email address",
        validators=[
            DataRequired("Enter your email address."),
            Email("Enter an email address like name@school.org.uk.", check_deliverability=False),
        ],
    )


def _new_password_fields() -> tuple[PasswordField, PasswordField]:
    """A new password and its confirmation; called in each form's body so field order follows."""
    password = PasswordField(
        "New password",
        validators=[
            DataRequired("Enter a new password."),
            Length(
                min=MIN_PASSWORD_LENGTH,
                max=200,
                message=f"Use at least {MIN_PASSWORD_LENGTH} characters.",
            ),
        ],  # fmt: skip
        description=f"At least {MIN_PASSWORD_LENGTH} characters. A few unrelated words work well.",
    )
    confirm = PasswordField(
        "Type the password again",
        validators=[
            DataRequired("Type the password again."),
            EqualTo("password", "The two passwords are not the same."),
        ],
    )
    return password, confirm


class SetPasswordForm(Form):
    password, confirm = _new_password_fields()


class ChangePasswordForm(Form):
    current = PasswordField(
        "Current password", validators=[DataRequired("Enter your current password.")]
    )
    password, confirm = _new_password_fields()


class PersonForm(Form):
    name = StringField("Full name", validators=[DataRequired("Enter the person's full name."),
                                                Length(max=200)])  # fmt: skip
    email = EmailField("Email address", validators=[DataRequired("Enter an email address.")])
    roles = MultiCheckboxField(
        "Roles",
        choices=[SelectChoice(code, label) for code, label in ROLES.items()],
        validators=[DataRequired("Choose at least one role.")],
    )
    schools = MultiCheckboxField(
        "Schools", choices=[], description="Leave all unticked for someone federation-wide."
    )


class ImportForm(Form):
    file = FileField(
        "CSV file",
        validators=[
            FileRequired("Choose a CSV file to upload."),
            FileAllowed(["csv", "txt"], "Upload a .csv file."),
        ],
        description="Columns: name,email,roles,schools. Separate several roles or schools with ';'.",
    )


class ConfirmForm(Form):
    """A button that changes something: CSRF protection and nothing else."""
