"""/api/v1: "is this person trained?" for other systems."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, g, jsonify, request
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from api.openapi import document
from api.tokens import authenticate
from core.db import db
from core.web import json_error
from people.models import Person
from training.loader import SLUG_RE
from training.models import Policy
from training.publishing import current_version
from training.status import Status, statuses_for

api_bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_REFS = 1000


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@api_bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Any:
    return json_error(error.status, error.code, error.message)


def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise ApiError(401, "unauthorized", "Send a token: 'Authorization: Bearer TOKEN'.")
            token = authenticate(db.session, secret.strip())
            if token is None:
                raise ApiError(401, "unauthorized", "The token is not valid or has been revoked.")
            if scope not in token.scopes:
                raise ApiError(403, "forbidden", f"This token does not have the {scope!r} scope.")
            g.api_token = token
            return view(*args, **kwargs)

        return wrapped

    return decorator


def _policy(slug: Any) -> Policy:
    s = db.session
    if slug is None:
        policies = s.scalars(select(Policy).order_by(Policy.slug)).all()
        if len(policies) == 1:
            return policies[0]
        names = ", ".join(p.slug for p in policies) or "none published"
        raise ApiError(400, "policy_required", f"Say which policy with 'policy': {names}.")
    if not isinstance(slug, str) or len(slug) > 80 or not SLUG_RE.match(slug):
        raise ApiError(400, "invalid_policy", "'policy' must be a policy's slug.")
    policy = s.scalar(select(Policy).where(Policy.slug == slug))
    if policy is None or current_version(s, policy) is None:
        raise ApiError(404, "policy_not_found", f"There is no published policy {slug!r}.")
    return policy


def status_json(person: Person, policy: Policy, status: Status) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "person": {
            "id": person.id,
            "name": person.name,
            "email": person.email,
            "roles": person.roles,
            "active": person.active,
        },
        "policy": {"slug": policy.slug, "version": status.version},
        "trained": status.trained,
        "valid_until": iso(status.valid_until),
        "modules": [
            {
                "slug": m.slug,
                "title": m.title,
                "status": m.state,
                "completed_at": iso(m.completed_at),
            }
            for m in status.modules
        ],
        "missing": [{"module": m.module, "reason": m.reason} for m in status.missing],
    }


def _is_id(ref: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
    return re.fullmatch(r"[0-9]{1,10}", ref) is not None and int(ref) <= 2**31 - 1


def _find_people(refs: list[str]) -> dict[str, Person]:
    """People by id or email, in one query whatever the number of refs."""
    refs = [r for r in refs if "\x00" not in r]  # can match nobody, and PostgreSQL refuses it
    ids = {int(r) for r in refs if _is_id(r)}
    emails = {r.strip().lower() for r in refs if not _is_id(r)}
    if not ids and not emails:
        return {}
    found = db.session.scalars(
        select(Person)
        .where(or_(Person.id.in_(ids), Person.email.in_(emails)))
        .options(selectinload(Person.role_rows))
    ).all()
    by_id = {str(p.id): p for p in found}
    by_email = {p.email: p for p in found}
    return {
        r: p for r in refs if (p := by_id.get(r) if _is_id(r) else by_email.get(r.strip().lower()))
    }


@api_bp.get("/people/<ref>/training-status")
@requires("training:read")
def person_status(ref: str) -> Any:
    unknown = set(request.args) - {"policy"}
    if unknown:
        raise ApiError(
            400, "unknown_parameter", f"Unknown query parameter: {', '.join(sorted(unknown))}."
        )
    policy = _policy(request.args.get("policy"))
    person = _find_people([ref]).get(ref)
    if person is None:
        raise ApiError(404, "person_not_found", "Nobody has that id or email address.")
    status = statuses_for(db.session, [person], policy)[person.id]
    return jsonify(status_json(person, policy, status))


@api_bp.post("/training-status/check")
@requires("training:read")
def check() -> Any:
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "Send JSON with 'Content-Type: application/json'."
        )
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object.")
    unknown = set(body) - {"people", "policy"}
    if unknown:
        raise ApiError(
            400, "unknown_field", f"Unknown field: {', '.join(sorted(map(str, unknown)))}."
        )
    refs = body.get("people")
    if not isinstance(refs, list) or not refs:
        raise ApiError(400, "invalid_people", "'people' must be a non-empty list of ids or emails.")
    if len(refs) > MAX_REFS:
        raise ApiError(400, "too_many_people", f"Ask about at most {MAX_REFS} people at a time.")
    cleaned: list[str] = []
    for ref in refs:
        if isinstance(ref, float) and ref.is_integer():
            ref = int(ref)  # JSON has one number type: 12.0 is the id 12
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise ApiError(
                400, "invalid_people", "Each entry of 'people' must be an id or an email."
            )
        if isinstance(ref, int) and not 0 < ref <= 2**31 - 1:
            raise ApiError(400, "invalid_people", "Person ids are positive whole numbers.")
        if isinstance(ref, str) and not 0 < len(ref) <= 254:
            raise ApiError(400, "invalid_people", "An email address is 1 to 254 characters.")
        cleaned.append(str(ref))
    policy = _policy(body.get("policy"))
    people = _find_people(cleaned)
    distinct = list({p.id: p for p in people.values()}.values())
    statuses = statuses_for(db.session, distinct, policy)
    results: list[dict[str, Any]] = []
    for original, ref in zip(refs, cleaned, strict=True):
        person = people.get(ref)
        if person is None:
            results.append({"ref": original, "error": "not_found"})
        else:
            results.append(status_json(person, policy, statuses[person.id]))
    all_trained = all("trained" in r and r["trained"] for r in results)
    return jsonify({"all_trained": all_trained, "results": results})


@api_bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(document())
