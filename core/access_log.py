"""Gunicorn's access log without the secret part of invitation, reset and LMS-connect links.

The link's token is in the path, so the request line, the path and the Referer of the pages and
files loaded from the set-password page would otherwise write a working link into the log. Used
by ``make run`` (``--logger-class core.access_log.Redacting``); use it wherever gunicorn serves the
app.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

LINK = re.compile(r"(/(?:invite|reset-password|lti/connect)/)[^/?#\s\"]+")


def redact(text: str) -> str:
    return LINK.sub(r"\1[redacted]", text)


class Redacting(Logger):
    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}
