"""Sessions opened by a launch are shown inside the learning platform's frame.

The launch records the platform's origins in the session; ``core.web`` asks for them (through the
hook ``lti.init_app`` installs) to give such a session a cookie a browser sends inside another
site's frame, and to let those origins, and no others, frame its pages.
"""

from __future__ import annotations

from typing import Any

from flask import session

# Set in the session by a launch: the origins of the platform whose frame the pages are shown in.
EMBEDDED_IN = "_embedded_in"


def embed_session(origins: list[str]) -> None:
    """Show this session's pages inside the frames of ``origins``, and only theirs."""
    session[EMBEDDED_IN] = origins


def embedded_in() -> Any:
    """The origins this session is shown in the frames of; None when it is not embedded."""
    return session.get(EMBEDDED_IN)
