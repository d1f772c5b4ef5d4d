"""Security events in the application log, one line each, for whoever watches the logs.

Refused and suspicious requests are logged when their answer goes out: every 401, 403 and 429
(a missing or refused API token, a page the role does not reach, a throttled sign-in), and any
request a view marks with :func:`flag` (a form whose CSRF token failed, a refused LMS launch,
quiz answers that were not among the options offered, a wrong password). The line names the
event, the answer, the method and path (invitation, reset and LMS-connect tokens redacted; no
query string), the client's address and the signed-in person's id, never a name or email. The
audit log keeps the events that are evidence; this log is for spotting attacks as they happen.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from flask import Flask, Response, g, request

from core.access_log import redact

log = logging.getLogger("countersign.security")

BY_STATUS = {401: "unauthenticated", 403: "forbidden", 429: "throttled"}
_KEY = "countersign_security_event"


def flag(event: str, reason: str = "") -> None:
    """Mark this request as a security event, logged once when its answer goes out."""
    setattr(g, _KEY, (event, reason))


def _person_id() -> str:
    user = getattr(g, "_login_user", None)  # only if this request already loaded it
    return str(user.id) if user is not None and getattr(user, "is_authenticated", False) else "-"


# The path as the client sent it may hold anything once decoded (line breaks, quotes, spaces,
# terminal escapes): it is logged percent-encoded, so one request is always one line whose
# fields cannot be forged.
_PATH_SAFE = "/:@!$&'()*+,;=-._~[]"
_METHOD = re.compile(r"[A-Z]{1,10}")


def _path() -> str:
    return quote(redact(request.path), safe=_PATH_SAFE)


def _method() -> str:
    return request.method if _METHOD.fullmatch(request.method) else "?"


def _words(text: str) -> str:
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())[:200].replace('"', "'")


def log_response(response: Response) -> Response:
    marked: tuple[str, str] | None = getattr(g, _KEY, None)
    event = marked[0] if marked else BY_STATUS.get(response.status_code)
    if event is None:
        return response
    reason = f' reason="{_words(marked[1])}"' if marked and marked[1] else ""
    log.warning(
        "event=%s status=%d method=%s path=%s ip=%s person=%s%s",
        event, response.status_code, _method(), _path(),
        request.remote_addr or "unknown", _person_id(), reason,
    )  # fmt: skip
    return response


def init_app(app: Flask) -> None:
    app.after_request(log_response)
