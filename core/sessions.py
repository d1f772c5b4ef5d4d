"""The session cookie: none for the API (stateless, bearer tokens), and the cookie a browser sends
inside another site's frame for a session shown there."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Request, current_app, g, has_request_context
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from core.errors import is_api, is_api_path

# A session shown inside another site's frame (a launch from a learning platform: see
# ``lti.embedding``): the package that opens such sessions puts, under this key of
# ``app.extensions``, a function giving the origins the current session is embedded in (none: not
# embedded). Such a session's cookie is SameSite=None; Secure; Partitioned (a browser sends no
# other kind inside another site's frame, and keeps a partitioned one even when it blocks
# third-party cookies) and its pages may be framed by those origins only. One response may also
# name its framers in ``g.frame_origins``.
EMBEDDING = "countersign.session_embedded_in"


def _embedded_in(app: Flask) -> Any:
    hook = app.extensions.get(EMBEDDING)
    return hook() if hook is not None else None


def embedding_origins() -> list[str]:
    """The origins that may frame this response: none, unless this is an embedded session
    (or a response that names its own framers, e.g. a launch refusal shown in the platform's
    frame)."""
    origins = g.get("frame_origins")
    if origins is None:
        origins = _embedded_in(current_app) if not is_api() else None
    if not isinstance(origins, list):
        return []
    return [o for o in origins if isinstance(o, str) and re.fullmatch(r"https?://[^\s;,'\"]+", o)]


class SessionInterface(SecureCookieSessionInterface):
    """Browser sessions for the pages; none for the API, which is stateless (bearer tokens):
    its requests neither read nor set the session cookie."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if is_api_path(request.path):
            return self.make_null_session(app)
        return super().open_session(app, request)

    def get_cookie_samesite(self, app: Flask) -> str | None:
        if has_request_context() and _embedded_in(app):
            return "None"
        return super().get_cookie_samesite(app)

    def get_cookie_secure(self, app: Flask) -> bool:
        if has_request_context() and _embedded_in(app):
            return True
        return super().get_cookie_secure(app)

    def get_cookie_partitioned(self, app: Flask) -> bool:
        # Partitioned (CHIPS): kept only for use inside the platform's pages, which is why a
        # browser that blocks third-party cookies still keeps it.
        if has_request_context() and _embedded_in(app):
            return True
        return super().get_cookie_partitioned(app)
