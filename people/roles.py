"""The roles a person can hold. Codes are stable identifiers used in content, CSV files and the API."""

ROLES: dict[str, str] = {
    "staff": "Staff",
    "governor": "Governor",
    "volunteer": "Volunteer",
    "parent": "Parent/carer",
    "slt": "Senior leadership (SLT)",
    "admin": "Administrator",
}


def role_code(text: str) -> str | None:
    """The role code for a code or a label, ignoring case and spacing; None when unknown."""
    wanted = " ".join(text.split()).casefold()
    for code, label in ROLES.items():
        if wanted in (code, label.casefold()):
            return code
    aliases = {"parent/carer": "parent", "carer": "parent", "administrator": "admin"}
    return aliases.get(wanted)
