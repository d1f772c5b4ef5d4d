"""Marking what a change touched, for the status store (:mod:`training.status_store`).

A domain function that writes evidence, roles, people or content calls :func:`touch` with the
people it touched, or :func:`touch_everyone` (a new version). The marks live on the database
session until its transaction ends: after a commit the status store brings exactly those people up
to date; after a rollback they are forgotten. Kept apart from the store itself so that the lowest
modules (publishing, people) can mark without importing the rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

TOUCHED = "countersign.touched"
EVERYONE = "countersign.touched_everyone"


def touch(session: Session, person_ids: Iterable[int]) -> None:
    """These people's status may have changed: bring it up to date after the commit."""
    touched = session.info.setdefault(TOUCHED, set())
    touched.update(int(pid) for pid in person_ids if pid is not None)


def touch_everyone(session: Session) -> None:
    """Everyone's status may have changed (a new version): the worker catches up after the
    commit, so the request that made the change does not wait for thousands of evaluations."""
    session.info[EVERYONE] = True
