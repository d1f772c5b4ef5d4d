"""Gunicorn's logs in UTC, and its access log without the secret part of invitation, reset and
LMS-connect links.

The link's token is in the path, so the request line, the path and the Referer of the pages and
files loaded from the set-password page would otherwise write a working link into the log. Used
by ``make run`` (``--logger-class core.access_log.Redacting``); use it wherever gunicorn serves the
app.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gunicorn.glogging import Logger

LINK = re.compile(r"(/(?:invite|reset-password|lti/connect)/)[^/?#\s\"]+")
# An API caller may name a person by email in the path; the log keeps that it was an email only.
EMAIL_IN_API_PATH = re.compile(r"(/api/v\d+/people/)[^/?#\s\"]*(?:@|%40)[^/?#\s\"]*")


def redact(text: str) -> str:
    return EMAIL_IN_API_PATH.sub(r"\1[email]", LINK.sub(r"\1[redacted]", text))


class Redacting(Logger):
    def setup(self, cfg: Any) -> None:
        """Gunicorn's own messages (start, worker exits, errors) get the app's UTC time stamps."""
        from core.web import LOG_FORMAT, UtcFormatter

        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(UtcFormatter(LOG_FORMAT))

    def now(self) -> str:
        """The access log's ``%(t)s``: Common Log Format, in UTC (``+0000``) rather than local time."""
        return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime())

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}
