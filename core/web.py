"""The web surface shared by every blueprint: sign-in plumbing, sessions, CSRF, host names, logs.

The error pages are in ``core.errors``, the response headers in ``core.security_headers`` and the
session cookie in ``core.sessions``; ``init_app`` here installs them all.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import date, datetime
from types import FunctionType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, user_logged_in
from flask_wtf.csrf import CSRFProtect

from core import errors, security_headers
from core.config import host_list, is_https, is_loopback
from core.errors import is_api, json_error
from core.mail import warn_about_plaintext
from core.security_log import flag
from core.security_log import init_app as log_security_events
from core.sessions import SessionInterface

login_manager = LoginManager()
csrf = CSRFProtect()


def federation() -> Any:
    """The federation's content (``training.loader.Federation``), loaded by ``training.init_app``."""
    return current_app.extensions["countersign.federation"]


def _local(value: datetime) -> datetime:
    return value.astimezone(ZoneInfo(current_app.config["TIMEZONE"]))


def format_datetime(value: datetime | None) -> str:
    """Times are stored in UTC and shown in the federation's time zone, naming it."""
    return _local(value).strftime("%-d %b %Y, %H:%M %Z") if value else "—"


def format_date(value: date | datetime | None) -> str:
    if isinstance(value, datetime):
        value = _local(value)
    return value.strftime("%-d %B %Y") if value else "—"


# Kept inside the signed session cookie, so they cannot be changed without the secret key:
# a random identifier, new at every sign-in; when the person signed in and when they were last
# seen, in seconds since the epoch.
SESSION_ID, SESSION_STARTED, SESSION_SEEN = "_sid", "_started", "_seen"
# Set on a session opened on another system's word (a learning platform's launch): it is not a
# full sign-in here.
SESSION_FROM_LMS = "_lti_launched"
TIMED_OUT = "Your session timed out, sign in again."


def start_session() -> None:
    """A new session identifier and clock for a person who has just proved who they are.

    Runs on every sign-in (Flask-Login's ``user_logged_in``), so whatever identifier the browser
    held before, perhaps planted by someone else, is never the signed-in one.
    """
    now = int(time.time())
    session[SESSION_ID] = secrets.token_urlsafe(32)
    session[SESSION_STARTED] = now
    session[SESSION_SEEN] = now
    session.permanent = True


def signed_in_recently() -> bool:
    """Whether this session began with a sign-in here (password, and second factor where one is
    needed) in the last ``COUNTERSIGN_RECENT_SIGN_IN_MINUTES`` (10). Changing how someone signs in
    (one's own second factor; anyone's email, roles, password link or factor; adding people or
    API tokens) needs it, so a session left open on a shared computer cannot do it. A session
    opened from the LMS never counts: it was opened on the platform's word."""
    seconds = float(current_app.config["RECENT_SIGN_IN_MINUTES"]) * 60
    started = session.get(SESSION_STARTED)
    recent = isinstance(started, int | float) and 0 <= time.time() - started <= seconds
    return recent and not session.get(SESSION_FROM_LMS)


def session_expired(data: Any, now: float, idle_minutes: float, max_hours: float) -> bool:
    """Whether a signed-in session has been idle too long or has lived too long altogether.

    A signed-in session without its clock (made before sessions had one) counts as expired.
    """
    started, seen = data.get(SESSION_STARTED), data.get(SESSION_SEEN)
    if not isinstance(started, int | float) or not isinstance(seen, int | float):
        return True
    return now - seen > idle_minutes * 60 or now - started > max_hours * 3600


def _check_session_age() -> Any:
    """Ends a signed-in session that has timed out, on the server, on every request."""
    if is_api() or request.endpoint == "static" or "_user_id" not in session:
        return None
    config = current_app.config
    now = time.time()
    if not session_expired(
        session, now, config["SESSION_IDLE_MINUTES"], config["SESSION_MAX_HOURS"]
    ):
        session[SESSION_SEEN] = int(now)
        return None
    session.clear()  # signed out: Flask-Login finds no user in what is left
    flash(TIMED_OUT, "info")
    if request.endpoint == "auth.sign_in":
        return None
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.sign_in", next=target))


class Countersign(Flask):
    """Flask, except that whether a view or a request hook needs an async wrapper is worked out
    once per function rather than on each of a request's dozen calls (Flask inspects the function
    every time; none of Countersign's is a coroutine, and it may never become one unnoticed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if type(func) is FunctionType:  # a bound method may be made afresh for each call
                self._sync[func] = sync
        return sync


def external_url(endpoint: str, **values: Any) -> str:
    """An absolute link for emails and copy-paste, on the configured BASE_URL."""
    return current_app.config["BASE_URL"].rstrip("/") + url_for(endpoint, **values)


# --- which host names this site answers to ---------------------------------------------------------

_HOST = re.compile(r"(?P<name>[a-z0-9._-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(config: Any) -> list[str]:
    """BASE_URL's host, the configured TRUSTED_HOSTS, and, when BASE_URL is on loopback, both
    ``localhost`` and ``127.0.0.1`` (and ``::1``), so a local installation answers to either."""
    allowed = config.get("ALLOWED_HOSTS")
    key = allowed if isinstance(allowed, str) or allowed is None else tuple(allowed)
    return list(_allowed_hosts(str(config["BASE_URL"]), key))


@functools.lru_cache(maxsize=64)
def _allowed_hosts(base_url: str, allowed: str | tuple[Any, ...] | None) -> tuple[str, ...]:
    # Asked on every request, of settings that rarely change: worked out once for each.
    base = (urlsplit(base_url).hostname or "").lower()
    hosts = [base, *host_list(allowed)]
    if is_loopback(base):
        hosts.extend(LOOPBACK_NAMES)
    return tuple(h for h in hosts if h)


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether a request's Host header (``name[:port]``; any port) names this site.

    A leading dot in the list allows every subdomain of the name.
    """
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return False
    name = match.group("name").strip("[]")
    for ref in allowed:
        if name == ref or (ref.startswith(".") and (name == ref[1:] or name.endswith(ref))):
            return True
    return False


def _refuse_other_hosts() -> Any:
    """A request addressed to a host name this site is not (DNS rebinding, poisoned links from a
    forged Host header) is refused before any other hook or view runs."""
    host = request.environ.get("HTTP_HOST") or request.environ.get("SERVER_NAME", "")
    if host_allowed(host, allowed_hosts(current_app.config)):
        return None
    message = "This site does not answer to that host name."
    if is_api():
        return json_error(400, "invalid_host", message)
    page = render_template(
        "error.html", code=400, title="Wrong address",
        message=f"{message} Check the address, or use {current_app.config['BASE_URL']}.",
    )  # fmt: skip
    return page, 400


def client_ip() -> str:
    return request.remote_addr or "unknown"


class UtcFormatter(logging.Formatter):
    """Log times in UTC, ISO 8601 with a ``Z``, whatever the server's time zone: lines from
    several servers, the proxy and the audit table (stored in UTC) then line up without guessing."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging() -> None:
    """Countersign's own messages (e.g. mail failures, start-up warnings) go to stderr."""
    logger = logging.getLogger("countersign")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(UtcFormatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def fresh_sign_in_for_changes(view: Callable[..., Any]) -> Callable[..., Any]:
    """For an administrator's action that changes who can sign in as whom: a request that changes
    something (not GET) needs :func:`signed_in_recently`; otherwise nothing is changed and the
    page offers to sign out and in again, coming back to where they were."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if request.method in ("GET", "HEAD", "OPTIONS") or signed_in_recently():
            return view(*args, **kwargs)
        flag("stale_session")
        rule = request.url_rule
        back = request.path if rule is not None and "GET" in (rule.methods or ()) else None
        return render_template(
            "sign_in_again.html", back=back or url_for("training.dashboard")
        ), 403

    return wrapped


def init_app(app: Flask) -> None:
    _configure_logging()
    if is_https(app) and not app.config["SECURE_COOKIES"]:
        logging.getLogger("countersign").warning(
            "COUNTERSIGN_BASE_URL is https but COUNTERSIGN_SECURE_COOKIES is off: the session "
            "cookie can be sent over plain http and there is no HSTS. Turn it back on."
        )
    warn_about_plaintext(app)
    if app.config["PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = int(app.config["PROXY_COUNT"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.session_interface = SessionInterface()
    # First of all the request hooks: nothing runs for a request to a host that is not this site.
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_other_hosts)
    csrf.init_app(app)
    log_security_events(app)

    @app.before_request
    def _refuse_nul_in_query() -> None:
        # NUL can never match stored data (PostgreSQL cannot even compare it): refuse it plainly.
        if request.query_string:  # most requests have none: nothing to parse
            try:
                args = request.args
            except UnicodeDecodeError:  # raw bytes that are not UTF-8: Werkzeug cannot parse them
                abort(400)
            if any("\x00" in value for values in args.listvalues() for value in values):
                abort(400)
        # The same for the parts of the address a view looks up (slugs, codes, attempt ids).
        if any(isinstance(v, str) and "\x00" in v for v in (request.view_args or {}).values()):
            abort(400)

    app.before_request(_check_session_age)

    @user_logged_in.connect_via(app)
    def _signed_in(_sender: Flask, **_extra: Any) -> None:
        start_session()

    login_manager.init_app(app)
    login_manager.login_view = "auth.sign_in"
    login_manager.login_message = "Sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"

    # Who a session belongs to is the people package's to say (``people.init_app``).

    app.add_template_filter(format_datetime, "datetime")
    app.add_template_filter(format_date, "date")
    security_headers.init_app(app)
    errors.init_app(app)
