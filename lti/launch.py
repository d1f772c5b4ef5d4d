"""LTI 1.3 launches: the OIDC login a platform starts, and the signed launch that follows.

PyLTI1p3 does the protocol (the login redirect, the id_token's format, signature, expiry,
registration, deployment and message claims); this module gives it the registered platforms from
the database. A login keeps its state and nonce in a signed cookie in the browser that started it,
so starting one writes nothing; an accepted launch records its nonce, so a replay, on whichever
worker, finds it used. Checks that need no writes run first; recording the nonce is the launch's
first write, so the database is never locked while a platform's keys are fetched.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from itsdangerous import BadData, URLSafeTimedSerializer
from pylti1p3.contrib.flask import FlaskCookieService, FlaskMessageLaunch, FlaskOIDCLogin
from pylti1p3.contrib.flask import FlaskRequest as _FlaskRequest
from pylti1p3.deployment import Deployment
from pylti1p3.exception import LtiException, OIDCException
from pylti1p3.registration import Registration
from pylti1p3.session import SessionService
from pylti1p3.tool_config import ToolConfAbstract
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db import utcnow
from lti import keys
from lti.models import LtiDeployment, LtiPlatform, LtiUsedNonce

LOGIN_LIFETIME = timedelta(minutes=10)
HTTP_TIMEOUT_SECONDS = 10
KEY_SET_CACHE_SECONDS = 600
KEY_SET_REFETCH_SECONDS = 60
CLOCK_SKEW_SECONDS = 60
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"


def insert_new(session: Session, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when a row was inserted. Asks for the new row back
    rather than trusting the row count, which the PostgreSQL driver reports as -1 here."""
    dialect_insert = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    key = list(table.primary_key.columns)[0]
    stmt = dialect_insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return session.execute(stmt).first() is not None


class LaunchRefused(Exception):
    """A login or launch that is not accepted, with what to tell the person and an HTTP status."""

    def __init__(self, title: str, message: str, status: int = 403, detail: str = "") -> None:
        super().__init__(message)
        self.title, self.message, self.status = title, message, status
        self.detail = detail[:200]  # shown to whoever is at the browser: a hint, never a dump
        self.platform: LtiPlatform | None = None  # the registered platform it came from, if known
        self.person_id: int | None = None  # the account it would have opened, if one was found


class TimeoutSession(requests.Session):
    """Every request to a platform is bounded in time (PyLTI1p3 sets no timeout itself) and
    never follows a redirect elsewhere."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", HTTP_TIMEOUT_SECONDS)
        kwargs["allow_redirects"] = False  # a platform's services answer where they are asked
        return super().request(method, url, *args, **kwargs)


def http_session() -> requests.Session:
    s = TimeoutSession()
    s.headers["User-Agent"] = "Countersign-LTI/1"
    return s


def registration_for(platform: LtiPlatform, tool_key: bool = False) -> Registration:
    """The platform as PyLTI1p3 sees it; with the tool's own key pair when calling its services."""
    reg = Registration()
    reg.set_issuer(platform.issuer).set_client_id(platform.client_id)
    reg.set_auth_login_url(platform.auth_login_url).set_auth_token_url(platform.auth_token_url)
    reg.set_key_set_url(platform.key_set_url).set_key_set(platform.key_set)
    if tool_key:
        reg.set_tool_private_key(keys.private_key_pem())
        reg.set_tool_public_key(keys.public_key_pem())
    return reg


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def service_url_ok(url: object, platform: LtiPlatform) -> bool:
    """Whether a service address a launch names is the platform's own: on the host of its issuer
    or token URL, over HTTPS (plain HTTP only on this machine), of a sensible length. Countersign
    calls nowhere else with its credentials."""
    if not isinstance(url, str) or not url or len(url) > 1000 or "\x00" in url:
        return False
    parts = urlsplit(url)
    hosts = {urlsplit(platform.issuer).hostname, urlsplit(platform.auth_token_url).hostname}
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK)
    return secure and parts.hostname is not None and parts.hostname in hosts


def find_platform(session: Session, issuer: str, client_id: str | None) -> LtiPlatform | None:
    """The active platform for an issuer and client id; without a client id (older platforms
    leave it out of the login), the issuer's only active registration."""
    query = select(LtiPlatform).where(LtiPlatform.issuer == issuer, LtiPlatform.active.is_(True))
    if client_id:
        return session.scalar(query.where(LtiPlatform.client_id == client_id))
    found = session.scalars(query.limit(2)).all()
    return found[0] if len(found) == 1 else None


class PlatformConf(ToolConfAbstract[_FlaskRequest]):
    """The registered platforms, from the database. One issuer may hold several client ids."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.platform: LtiPlatform | None = None

    def check_iss_has_one_client(self, iss: str) -> bool:
        return False

    def check_iss_has_many_clients(self, iss: str) -> bool:
        return True

    def find_registration_by_issuer(self, iss: str, *args: Any, **kwargs: Any) -> Registration:
        raise NotImplementedError("registrations are found by issuer and client id")

    def find_registration_by_params(
        self, iss: str, client_id: str | None, *args: Any, **kwargs: Any
    ) -> Registration | None:
        self.platform = find_platform(self.session, iss, client_id)
        return registration_for(self.platform) if self.platform else None

    def find_deployment(self, iss: str, deployment_id: str) -> Deployment | None:
        raise NotImplementedError("deployments are found by issuer, client id and deployment id")

    def find_deployment_by_params(
        self, iss: str, deployment_id: str, client_id: str, *args: Any, **kwargs: Any
    ) -> Deployment | None:
        platform = find_platform(self.session, iss, client_id)
        if platform is None or not isinstance(deployment_id, str):
            return None
        found = self.session.scalar(
            select(LtiDeployment.id).where(
                LtiDeployment.platform_id == platform.id,
                LtiDeployment.deployment_id == deployment_id,
            )
        )
        return Deployment().set_deployment_id(deployment_id) if found else None


class LoginStore(SessionService):
    """Keeps a login's nonce and platform in a signed, short-lived cookie named after its state,
    instead of the database: starting a login writes nothing, so ``/lti/login`` cannot be used
    to fill the database. The cookie also ties the launch to the browser that started it (an
    LMS iframe may not carry the browser's session across the platform's redirect, but it
    carries this cookie, which is ``SameSite=None; Partitioned``). A launch that is accepted
    stores its nonce until the login would have expired, so a replay finds it used."""

    def __init__(
        self,
        request: _FlaskRequest,
        session: Session,
        secret: str,
        cookies: FlaskCookieService,
        platform_id: int | None = None,
    ) -> None:
        super().__init__(request)
        self.session = session
        self.cookies = cookies
        self.platform_id = platform_id
        self._signer = URLSafeTimedSerializer(secret, salt="countersign-lti-login")
        self._nonce: str | None = None

    def save_nonce(self, nonce: str) -> None:
        self._nonce = nonce

    def save_state_params(self, state: str, params: dict[str, object]) -> None:
        assert self._nonce is not None and self.platform_id is not None
        value = self._signer.dumps({"s": state, "n": self._nonce, "p": self.platform_id})
        # Replaces the plain state cookie PyLTI1p3 set under the same name.
        self.cookies.set_cookie(state, value, int(LOGIN_LIFETIME.total_seconds()))

    def take_state(self, state: str, platform_id: int) -> bool:
        """Whether this browser started a login with this state, for this platform, not too long
        ago; its nonce is then the one the launch must carry."""
        value = self.cookies.get_cookie(state)
        if not value:
            return False
        try:
            data = self._signer.loads(str(value), max_age=int(LOGIN_LIFETIME.total_seconds()))
        except BadData:
            return False
        if not isinstance(data, dict) or data.get("s") != state or data.get("p") != platform_id:
            return False
        nonce = data.get("n")
        self._nonce = nonce if isinstance(nonce, str) else None
        return self._nonce is not None

    def use_nonce(self) -> bool:
        """Record the launch's nonce as used; False if it already was (a replay)."""
        assert self._nonce is not None
        now = utcnow()
        self.session.execute(delete(LtiUsedNonce).where(LtiUsedNonce.expires_at < now))
        return insert_new(
            self.session, LtiUsedNonce.__table__,
            {"nonce": self._nonce, "expires_at": now + LOGIN_LIFETIME},
        )  # fmt: skip

    def check_nonce(self, nonce: str) -> bool:
        return self._nonce is not None and secrets.compare_digest(str(nonce), self._nonce)

    def save_launch_data(self, key: str, jwt_body: Any) -> None:
        raise NotImplementedError("a launch keeps what it needs in its own tables")


class StateCookies(FlaskCookieService):
    """The login's state, kept in the browser that started it, so that only that browser can
    complete the launch (a stolen state and id_token posted from another browser are refused).
    ``SameSite=None; Secure`` so it comes back with the platform's cross-site POST, and
    ``Partitioned`` so a browser keeps it inside the platform's frame even when it blocks
    third-party cookies. Always Secure, so its name carries the ``__Secure-`` prefix (its path,
    /lti/, rules out ``__Host-``): a browser refuses it from any page that is not https."""

    _cookie_prefix = "__Secure-lti1p3"

    def update_response(self, response: Any) -> None:
        for key, data in self._cookie_data_to_set.items():
            response.set_cookie(
                key, data["value"], max_age=data["exp"], path="/lti/", secure=True,
                httponly=True, samesite="None", partitioned=True,
            )  # fmt: skip


class Login(FlaskOIDCLogin):
    def _generate_nonce(self) -> str:
        return secrets.token_urlsafe(32)

    def _get_uuid(self) -> str:
        return secrets.token_urlsafe(32)


def start_login(
    session: Session, params: dict[str, str], launch_url: str, secure: bool, secret: str
) -> Any:
    """The redirect that sends the browser to the platform's login, with a state and nonce kept.

    ``params`` are the login initiation's parameters (iss, login_hint, client_id, ...).
    """
    iss, client_id = params.get("iss") or "", params.get("client_id") or None
    if not iss or not params.get("login_hint"):
        raise LaunchRefused(
            "This link did not come from an LMS",
            "A launch starts in your school's learning platform: open the training activity "
            "from your course there.",
            status=400,
        )
    platform = find_platform(session, iss, client_id)
    if platform is None:
        raise _unregistered(iss, client_id)
    request = _FlaskRequest(request_data=params, request_is_secure=secure)
    cookies = StateCookies(request)
    store = LoginStore(request, session, secret, cookies, platform.id)
    login = Login(request, PlatformConf(session), session_service=store, cookie_service=cookies)
    login.pass_params_to_launch({"platform": platform.id})
    try:
        return login.redirect(launch_url)
    except OIDCException as exc:  # a registration that vanished between the two reads
        raise _unregistered(iss, client_id) from exc


def _unregistered(iss: str, client_id: str | None) -> LaunchRefused:
    return LaunchRefused(
        "This learning platform is not registered",
        "Countersign does not know the learning platform that sent you here "
        f"(issuer {iss}{', client id ' + client_id if client_id else ''}). "
        "Ask a Countersign administrator to register it.",
    )


_key_sets: dict[str, tuple[float, Any]] = {}


class Launch(FlaskMessageLaunch):
    """A launch checked in two steps: :meth:`check_signed` (no writes) then :meth:`check_fresh`."""

    def __init__(self, request: _FlaskRequest, conf: PlatformConf, store: LoginStore) -> None:
        super().__init__(
            request, conf, session_service=store, cookie_service=store.cookies,
            requests_session=http_session(),
        )  # fmt: skip
        self.conf, self.store = conf, store
        self.set_auto_validation(False)
        self.set_jwt_verify_options({"verify_aud": False, "require": ["exp", "iat"]})

    def fetch_public_key(self, key_set_url: str) -> Any:
        """The platform's key set, kept for a few minutes so that not every launch fetches it."""
        cached = _key_sets.get(key_set_url)
        if cached and time.monotonic() - cached[0] < KEY_SET_CACHE_SECONDS:
            return cached[1]
        key_set = super().fetch_public_key(key_set_url)
        if isinstance(key_set, dict) and isinstance(key_set.get("keys"), list):
            _key_sets[key_set_url] = (time.monotonic(), key_set)
        return key_set

    def get_public_key(self) -> Any:
        try:
            return super().get_public_key()
        except LtiException:
            # The platform may have rotated its keys since they were kept: fetch them once more,
            # unless they were fetched in the last minute (so unsigned tokens naming an unknown
            # key cannot make every launch fetch them) or were pasted into the registration.
            platform = self.conf.platform
            url = platform.key_set_url if platform is not None else None
            cached = _key_sets.get(url) if url else None
            if platform is None or platform.key_set is not None or cached is None:
                raise
            if time.monotonic() - cached[0] < KEY_SET_REFETCH_SECONDS:
                raise
            _key_sets.pop(url, None)
            self._registration.set_key_set(None)
            return super().get_public_key()

    def validate_jwt_signature(self) -> Launch:
        """As PyLTI1p3's, allowing a minute of difference between the platform's clock and ours."""
        public_key, key_alg = self.get_public_key()
        try:
            jwt.decode(
                self._get_id_token(), public_key, algorithms=[key_alg],
                options=self._jwt_verify_options, leeway=CLOCK_SKEW_SECONDS,
            )  # fmt: skip
        except jwt.InvalidTokenError as exc:
            raise LtiException(f"Can't decode id_token: {exc}") from exc
        return self

    def _stage(self, check: Any, title: str, message: str, status: int = 403) -> None:
        try:
            check()
        except LtiException as exc:
            raise LaunchRefused(title, message, status, detail=str(exc)) from exc

    def check_signed(self) -> Launch:
        """Format, registration, signature and expiry, audience, deployment and message type."""
        self._validated = True
        if not self._request.get_param("id_token") or not self._request.get_param("state"):
            raise LaunchRefused(
                "This link did not come from an LMS",
                "A launch starts in your school's learning platform: open the training activity "
                "from your course there.",
                status=400,
            )
        self._stage(self.validate_jwt_format, "The launch could not be read",
                    "The learning platform sent a launch that is not a valid token.", 400)  # fmt: skip
        body = self._jwt["body"]
        if not isinstance(body, dict):
            raise LaunchRefused("The launch could not be read", "The launch holds no claims.", 400)
        _check_shape(body)
        try:
            self.validate_registration()
        except LtiException as exc:
            known_issuer = select(LtiPlatform.id).where(
                LtiPlatform.issuer == body["iss"], LtiPlatform.active.is_(True)
            )
            if self.conf.session.scalar(known_issuer.limit(1)):
                raise LaunchRefused(
                    "This launch was meant for another tool",
                    "The learning platform is registered, but the launch's audience is not "
                    "Countersign's client id there.",
                    detail=f"aud={body.get('aud')!r}",
                ) from exc
            raise _unregistered(body["iss"], _text(self.get_client_id())) from exc
        self._check_signature()
        self._check_audience()
        self._stage(self.validate_deployment, "This deployment is not registered",
                    f"The learning platform launched from a deployment of the tool "
                    f"({_text(body.get(CLAIM + 'deployment_id'))}) that Countersign does not "
                    "know. Ask a Countersign administrator to add its deployment id.")  # fmt: skip
        message_type = body.get(CLAIM + "message_type")
        if message_type != RESOURCE_LINK_REQUEST:
            raise LaunchRefused(
                "This kind of launch is not supported",
                f"Countersign opens from a link to the activity ({RESOURCE_LINK_REQUEST}), not "
                f"from {_text(message_type)}. Add it to the course as an external tool activity.",
                status=400,
            )
        self._stage(self.validate_message, "The launch is incomplete",
                    "The launch lacks claims LTI 1.3 requires (version, resource link, user).",
                    400)  # fmt: skip
        return self

    def _check_signature(self) -> None:
        try:
            self.validate_jwt_signature()
        except LtiException as exc:
            cause = exc.__cause__
            if isinstance(cause, jwt.ExpiredSignatureError):
                raise LaunchRefused(
                    "This launch has expired",
                    "The launch from your learning platform is too old to accept. Open the "
                    "activity again from your course.",
                    detail=str(exc),
                ) from exc
            raise LaunchRefused(
                "The launch's signature is not valid",
                "The launch was not signed with a key of the registered learning platform, so "
                "it was refused.",
                detail=str(exc),
            ) from exc

    def get_client_id(self) -> str:
        """The audience this launch is for: with several, the authorised party (``azp``)."""
        body = self._jwt.get("body", {})
        aud, azp = body.get("aud"), body.get("azp")
        if isinstance(aud, list) and isinstance(azp, str) and azp in aud:
            return azp
        return super().get_client_id()

    def _check_audience(self) -> None:
        body = self._jwt["body"]
        client_id = self._registration.get_client_id() if self._registration else None
        aud = body.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        ok = client_id in audiences and (len(audiences) == 1 or body.get("azp") == client_id)
        if not ok:
            raise LaunchRefused(
                "This launch was meant for another tool",
                "The launch's audience is not Countersign's client id on that platform.",
                detail=f"aud={aud!r}",
            )

    def check_fresh(self) -> None:
        """The state is one this browser's login was given, not expired, the token carries its
        nonce, and that nonce was not used before. Records the nonce as used, so call it inside
        a transaction that commits whether or not the person is then signed in."""
        state = str(self._request.get_param("state"))
        platform = self.conf.platform
        if not self.store.cookies.get_cookie(state):
            raise LaunchRefused(
                "This launch did not start in this browser",
                "The launch was sent by a different browser from the one that started it, or "
                "your browser did not keep Countersign's cookie. Open the activity again from "
                "your course; if this keeps happening, ask your LMS administrator to open "
                "Countersign in a new window.",
                detail="no state cookie, or another",
            )
        if platform is None or not self.store.take_state(state, platform.id):
            raise _replayed("The launch's state is unknown or expired.")
        if not self.store.check_nonce(self._jwt["body"].get("nonce")):
            raise _replayed("The launch's nonce is not the one its login was given.")
        if not self.store.use_nonce():
            raise _replayed("The launch's nonce was used before.")

    @property
    def claims(self) -> dict[str, Any]:
        return self._jwt["body"]


def _check_shape(body: dict[str, Any]) -> None:
    """The claims Countersign relies on are there and of the kinds LTI 1.3 gives them."""

    def unreadable(what: str) -> LaunchRefused:
        return LaunchRefused("The launch could not be read", f"The launch's {what}.", 400)

    aud = body.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise unreadable("audience is missing or not a client id")
    for claim, longest in (
        ("iss", 500),
        ("sub", 255),
        ("nonce", 255),
        (CLAIM + "deployment_id", 255),
    ):
        value = body.get(claim)
        if not isinstance(value, str) or not value or len(value) > longest:
            raise unreadable(f"{claim.removeprefix(CLAIM)} is missing or not valid")
    if "\\u0000" in json.dumps(body):  # nothing holding a NUL can be stored
        raise unreadable("claims hold a NUL character")
    link = body.get(CLAIM + "resource_link")
    if link is not None and (
        not isinstance(link, dict) or not isinstance(link.get("id"), str) or len(link["id"]) > 255
    ):
        raise unreadable("resource link is not valid")
    for name in (CLAIM + "context", CLAIM + "custom", AGS_CLAIM):
        if name in body and not isinstance(body[name], dict):
            raise unreadable(f"{name.rsplit('/', 1)[-1]} claim is not valid")
    scope = (body.get(AGS_CLAIM) or {}).get("scope")
    if scope is not None and not (
        isinstance(scope, list) and all(isinstance(x, str) for x in scope)
    ):
        raise unreadable("grade service scopes are not valid")


def _replayed(detail: str) -> LaunchRefused:
    return LaunchRefused(
        "This launch has already been used",
        "Each launch from your learning platform can be used once and soon expires. Open the "
        "activity again from your course.",
        detail=detail,
    )


def _text(value: Any) -> str:
    return str(value)[:200] if value is not None else "none given"


def read_launch(session: Session, form: dict[str, str], secure: bool, secret: str) -> Launch:
    request = _FlaskRequest(request_data=form, request_is_secure=secure)
    conf = PlatformConf(session)
    launch = Launch(request, conf, LoginStore(request, session, secret, StateCookies(request)))
    try:
        return launch.check_signed()
    except LaunchRefused as exc:
        exc.platform = conf.platform
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        # A claim of a shape the checks above did not foresee: refused, not an error page.
        refused = LaunchRefused("The launch could not be read",
                                "The launch's claims are not in the form LTI 1.3 gives them.",
                                400, detail=type(exc).__name__)  # fmt: skip
        refused.platform = conf.platform
        raise refused from exc


@dataclass(frozen=True)
class LaunchInfo:
    """What Countersign keeps from a valid launch."""

    subject: str
    email: str | None
    name: str | None
    roles: tuple[str, ...]  # short names, e.g. "Instructor"
    resource_link_id: str
    context_title: str | None
    custom: dict[str, Any]
    ags: dict[str, Any] | None


def launch_info(claims: dict[str, Any]) -> LaunchInfo:
    def text(value: Any) -> str | None:
        return value.strip() if isinstance(value, str) and value.strip() else None

    name = text(claims.get("name")) or " ".join(
        p for p in (text(claims.get("given_name")), text(claims.get("family_name"))) if p
    )
    roles = claims.get(CLAIM + "roles")
    context = claims.get(CLAIM + "context")
    custom = claims.get(CLAIM + "custom")
    ags = claims.get(AGS_CLAIM)
    return LaunchInfo(
        subject=str(claims.get("sub") or ""),
        email=text(claims.get("email")),
        name=name or None,
        roles=tuple(short_role(r) for r in roles if isinstance(r, str))
        if isinstance(roles, list)
        else (),
        resource_link_id=str((claims.get(CLAIM + "resource_link") or {}).get("id") or ""),
        context_title=text(context.get("title")) if isinstance(context, dict) else None,
        custom=custom if isinstance(custom, dict) else {},
        ags=ags if isinstance(ags, dict) else None,
    )


def short_role(uri: str) -> str:
    """``http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor`` -> ``Instructor``."""
    return uri.rsplit("#", 1)[-1].rsplit("/", 1)[-1]


def origins_of(platform: LtiPlatform) -> list[str]:
    """Where a platform's pages are served from, for the frame-ancestors it may embed us in."""
    found = []
    for url in (platform.issuer, platform.auth_login_url):
        parts = urlsplit(url)
        if parts.scheme in ("https", "http") and parts.netloc:
            origin = f"{parts.scheme}://{parts.netloc}"
            if origin not in found:
                found.append(origin)
    return found
