from __future__ import annotations

import re
from typing import Any

from flask import current_app
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import EmailField, PasswordField, SelectMultipleField, StringField, widgets
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Email, EqualTo, Length, StopValidation

from core.forms import Form
from people.passwords import MAX_LENGTH, MIN_LENGTH, password_problem
from people.roles import ROLES


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


def acceptable_password(form: Any, field: Any) -> None:
    """The password rules (length, not a common password), with their reason at the field."""
    problem = password_problem(field.data or "")
    if problem:
        raise StopValidation(problem)


def _new_password_fields() -> tuple[PasswordField, PasswordField]:
    """A new password and its confirmation; called in each form's body so field order follows."""
    password = PasswordField(
        "New password",
        validators=[DataRequired("Enter a new password."), acceptable_password],
        description=f"At least {MIN_LENGTH} characters (at most {MAX_LENGTH}); not a common "
        "password, nor your name or email address. A few unrelated words work well.",
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


# Files people save by mistake instead of CSV: their first bytes say what they are.
NOT_CSV = (
    (b"PK\x03\x04", "a spreadsheet workbook (such as .xlsx)"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel or Word file (.xls or .doc)"),
    (b"%PDF", "a PDF document"),
)
# Text has no control characters other than tab, line feed and carriage return.
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def csv_text_file(form: Any, field: Any) -> None:
    """Refuse an upload larger than ``IMPORT_MAX_BYTES`` or that is not UTF-8 text.

    The extension and the browser's content type prove nothing (Windows calls CSV files
    ``application/vnd.ms-excel``), so the bytes themselves are looked at.
    """
    limit = current_app.config["IMPORT_MAX_BYTES"]
    stream = field.data.stream
    head = stream.read(int(limit) + 1)
    stream.seek(0)
    if len(head) > limit:
        raise StopValidation(
            f"The file is larger than {megabytes(limit)}. Split it into smaller files and "
            "import each one."
        )
    if not head.strip():
        raise StopValidation("The file is empty.")
    for magic, what in NOT_CSV:
        if head.startswith(magic):
            raise StopValidation(
                f"This is {what}, not a CSV file. In your spreadsheet, save it as 'CSV UTF-8'."
            )
    if CONTROL.search(head):
        raise StopValidation(
            "The file is not a text file. In your spreadsheet, save it as 'CSV UTF-8'."
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        raise StopValidation(
            "The file is not UTF-8 text. In your spreadsheet, save it as 'CSV UTF-8'."
        ) from None


class ImportForm(Form):
    file = FileField(
        "CSV file",
        validators=[
            FileRequired("Choose a CSV file to upload."),
            FileAllowed(["csv", "txt"], "Upload a .csv file."),
            csv_text_file,
        ],
        description="Columns: name,email,roles,schools. Separate several roles or schools with ';'.",
    )


class ConfirmForm(Form):
    """A button that changes something: CSRF protection and nothing else."""
