"""Signals between domains, so a rule's caller need not know who listens.

``status_may_change`` is sent after a commit that may change people's training status (reading,
passing a quiz, signing, a role change, a leaver, a new version); listeners recompute what they
keep. ``person_ids`` None means everyone.
"""

from __future__ import annotations

from collections.abc import Iterable

from blinker import Namespace
from flask import current_app

_signals = Namespace()
status_may_change = _signals.signal("status-may-change")


def statuses_changed(person_ids: Iterable[int] | None) -> None:
    ids = None if person_ids is None else sorted(set(person_ids))
    status_may_change.send(current_app._get_current_object(), person_ids=ids)
