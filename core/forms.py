"""The base for every HTML form: CSRF from Flask-WTF, and input cleaned before validation."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm


def _clean(value: Any) -> Any:
    # NUL can never be stored (PostgreSQL refuses it in text), so it never reaches the rules.
    if isinstance(value, str):
        return value.replace("\x00", "")
    return value


class Form(FlaskForm):
    class Meta:
        def bind_field(self, form: Any, unbound_field: Any, options: dict[str, Any]) -> Any:
            filters = unbound_field.kwargs.get("filters", ())
            unbound_field.kwargs["filters"] = (_clean, *filters)
            return unbound_field.bind(form=form, **options)
