"""Registering a learning platform: the values its LTI 1.3 tool configuration gives, checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from jwcrypto.common import JWException
from jwcrypto.jwk import JWK
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.log import record
from lti.accounts import DEFAULT_ROLE_MAP
from lti.models import LtiDeployment, LtiPlatform
from training.loader import Federation

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PlatformError(ValueError):
    """A registration that cannot be saved; the message says what to fix."""


@dataclass
class PlatformData:
    name: str
    issuer: str
    client_id: str
    auth_login_url: str
    auth_token_url: str
    key_set_url: str = ""
    key_set: str = ""  # a JSON key set, for platforms that give a key rather than a URL
    deployment_ids: tuple[str, ...] = ()
    role_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    school: str = ""
    active: bool = True


def _url(value: str, label: str, required: bool = True) -> str | None:
    value = value.strip()
    if not value:
        if required:
            raise PlatformError(f"Enter the {label}.")
        return None
    parts = urlsplit(value)
    if len(value) > 500 or any(c.isspace() for c in value) or not parts.hostname:
        raise PlatformError(f"The {label} must be a full web address.")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        raise PlatformError(f"The {label} must start https:// (the platform's own address).")
    return value


def _key_set(text: str) -> dict | None:
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PlatformError("The key set is not JSON; paste the platform's JWKS.") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise PlatformError('The key set must be a JSON object with a "keys" list.')
    for key in keys:
        try:
            jwk = JWK(**key) if isinstance(key, dict) else None
        except (JWException, TypeError, ValueError) as exc:
            raise PlatformError(f"A key in the key set can't be read: {exc}") from exc
        if jwk is None or jwk.get("kty") != "RSA" or not key.get("kid") or jwk.has_private:
            raise PlatformError("Each key must be a public RSA key with a kid.")
    return data


def clean(data: PlatformData, federation: Federation) -> PlatformData:
    name = " ".join(data.name.split())
    if not name or len(name) > 200:
        raise PlatformError("Give the platform a name of up to 200 characters, e.g. 'Moodle'.")
    issuer = _url(data.issuer, "platform ID (issuer)")
    client_id = data.client_id.strip()
    if not client_id or len(client_id) > 255 or any(c.isspace() for c in client_id):
        raise PlatformError("Enter the client ID the platform gave the tool.")
    login = _url(data.auth_login_url, "authentication request URL")
    token = _url(data.auth_token_url, "access token URL")
    key_set_url = _url(data.key_set_url, "public keyset URL", required=False) or ""
    if bool(key_set_url) == bool(data.key_set.strip()):
        raise PlatformError(
            "Give either the platform's public keyset URL or its key set, not both."
        )
    _key_set(data.key_set)
    deployments = tuple(dict.fromkeys(d.strip() for d in data.deployment_ids if d.strip()))
    if not deployments:
        raise PlatformError("Enter at least one deployment ID.")
    if any(len(d) > 255 for d in deployments):
        raise PlatformError("A deployment ID is longer than 255 characters.")
    codes = {s.code for s in federation.schools}
    if data.school and data.school not in codes:
        raise PlatformError(f"Unknown school: {data.school}.")
    return PlatformData(
        name, issuer or "", client_id, login or "", token or "", key_set_url, data.key_set.strip(),
        deployments, dict(data.role_map), data.school, data.active,
    )  # fmt: skip


def _apply(platform: LtiPlatform, data: PlatformData) -> None:
    platform.name, platform.issuer, platform.client_id = data.name, data.issuer, data.client_id
    platform.auth_login_url, platform.auth_token_url = data.auth_login_url, data.auth_token_url
    platform.key_set_url = data.key_set_url or None
    platform.key_set = _key_set(data.key_set)
    platform.role_map = data.role_map
    platform.school = data.school or None
    platform.active = data.active
    wanted = list(data.deployment_ids)
    platform.deployments = [d for d in platform.deployments if d.deployment_id in wanted] + [
        LtiDeployment(deployment_id=d) for d in wanted if d not in platform.deployment_ids
    ]


def _taken(session: Session, data: PlatformData, other_than: int | None) -> bool:
    found = session.scalar(
        select(LtiPlatform.id).where(
            LtiPlatform.issuer == data.issuer, LtiPlatform.client_id == data.client_id
        )
    )
    return found is not None and found != other_than


def register_platform(
    session: Session, data: PlatformData, federation: Federation, by_id: int | None = None
) -> LtiPlatform:
    data = clean(data, federation)
    if _taken(session, data, None):
        raise PlatformError("That issuer and client ID are already registered.")
    platform = LtiPlatform(created_by_id=by_id, deployments=[])
    _apply(platform, data)
    session.add(platform)
    session.flush()
    record(session, "lti.platform_registered", actor_id=by_id, subject_type="lti_platform",
           subject_id=platform.id)  # fmt: skip
    return platform


def update_platform(
    session: Session,
    platform: LtiPlatform,
    data: PlatformData,
    federation: Federation,
    by_id: int | None = None,
) -> LtiPlatform:
    data = clean(data, federation)
    if _taken(session, data, platform.id):
        raise PlatformError("Another registration already has that issuer and client ID.")
    _apply(platform, data)
    session.flush()
    record(session, "lti.platform_changed", actor_id=by_id, subject_type="lti_platform",
           subject_id=platform.id, detail={"active": platform.active})  # fmt: skip
    return platform


def data_of(platform: LtiPlatform) -> PlatformData:
    return PlatformData(
        platform.name, platform.issuer, platform.client_id, platform.auth_login_url,
        platform.auth_token_url, platform.key_set_url or "",
        json.dumps(platform.key_set, indent=2) if platform.key_set else "",
        tuple(platform.deployment_ids), dict(platform.role_map or {}), platform.school or "",
        platform.active,
    )  # fmt: skip
