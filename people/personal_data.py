"""Which packages hold a person's data, and how each exports and erases its part.

The personal-data download and erasure (:mod:`people.privacy`) belong to the people package, but
the rows live in every domain. Rather than people importing every domain, each package registers
its part from its own ``init_app``: the section it adds to the download, the rows it erases or
pseudonymises, and the evidence rows it will change (checked against the audit log before
anything changes). A table that names a person but is not personal data is declared so, with
the reason; ``tests/test_privacy_registry.py`` checks that every table naming a person is one or
the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from sqlalchemy import ColumnElement, func, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

if TYPE_CHECKING:
    from people.models import Person

EXTENSION = "countersign.personal_data"


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class Export:
    """What an exporter is given: the person, and how to link to a certificate's check page."""

    session: Session
    person: Person
    verify_url: Callable[[str], str]
    # Lookups several sections share (e.g. module titles), made once per download.
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass
class Erasure:
    """One person's erasure, as the erasers see it. They run in the caller's transaction, between
    the evidence check and the person's own row being pseudonymised, and add the ids of every
    evidence row they change to ``changed`` (the chain then records each row's new digest)."""

    session: Session
    person_id: int
    old_name: str
    old_email: str
    new_name: str
    new_email: str
    changed: dict[str, set[int]] = field(default_factory=dict)

    def pseudonymised(self, table: str, row_id: int) -> None:
        """Note an evidence row this erasure changed (it must be one ``evidence`` found)."""
        self.changed.setdefault(table, set()).add(row_id)

    def redact(self, text: str) -> str:
        """``text`` with the old email and the old name (as a whole word) replaced."""
        text = re.sub(re.escape(self.old_email), self.new_email, text, flags=re.IGNORECASE)
        name = rf"(?<!\w){re.escape(self.old_name)}(?!\w)"
        return re.sub(name, self.new_name, text, flags=re.IGNORECASE)

    def mentions(self, *columns: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
        """Rows where any of ``columns`` contains the old name or email, in any case."""
        return mentioning(columns, self.old_name, self.old_email)


def mentioning(
    columns: tuple[InstrumentedAttribute[Any], ...], name: str, email: str
) -> ColumnElement[bool]:
    return or_(
        *(
            func.lower(column).contains(needle.lower(), autoescape=True)
            for column in columns
            for needle in (name, email)
        )
    )


Exporter = Callable[[Export], Any]
Eraser = Callable[[Erasure], None]
# (session, person id, old name, old email) -> {evidence table: ids erasure will change}
EvidenceFinder = Callable[[Session, int, str, str], Mapping[str, list[int]]]


@dataclass(frozen=True)
class PersonalData:
    """One part of a person's data: its section of the download (``name``), how it is erased,
    and the tables it covers. Parts run in ``order``, lowest first, for both. Erasure's order
    today: sign-in attempts 40, learning-platform accounts 50, second factors 60, stored answers
    70, acknowledgements 80, certificates 90, applications and the register 100, webhook
    deliveries 140; the person's own row last, in ``people.privacy.erase_person``."""

    name: str
    tables: tuple[str, ...]
    export: Exporter | None
    erase: Eraser | None
    evidence: EvidenceFinder | None
    order: int


@dataclass
class Registry:
    parts: dict[str, PersonalData] = field(default_factory=dict)
    # table -> why it names a person but holds nothing of theirs to export or erase
    not_personal: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> list[PersonalData]:
        return sorted(self.parts.values(), key=lambda part: (part.order, part.name))


def registry(app: Flask | None = None) -> Registry:
    return (app or current_app).extensions.setdefault(EXTENSION, Registry())


def register_personal_data(
    app: Flask,
    name: str,
    *,
    tables: tuple[str, ...],
    export: Exporter | None = None,
    erase: Eraser | None = None,
    evidence: EvidenceFinder | None = None,
    order: int,
) -> None:
    """Add a part of the personal data. ``export`` returns the JSON-ready section ``name`` of the
    download (None: not in the download); ``erase`` erases or pseudonymises the person's rows;
    ``evidence`` finds, before anything changes, the ids of the evidence rows ``erase`` will
    change, so they can be checked against the audit log first."""
    parts = registry(app).parts
    if name in parts:
        raise ValueError(f"personal data {name!r} is registered twice")
    parts[name] = PersonalData(name, tables, export, erase, evidence, order)


def register_not_personal(app: Flask, table: str, reason: str) -> None:
    """Declare a table that names a person but holds nothing to export or erase, and why."""
    registry(app).not_personal[table] = reason
