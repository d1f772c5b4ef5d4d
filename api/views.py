"""/api/v1: "is this person trained?" for other systems."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from api.answers import (
    Answer,
    CheckDoc,
    PolicyRef,
    encode,
    find_answers,
    is_id,
    not_found,
    policies,
    status_only,
)
from api.openapi import document
from api.tokens import PERSONAL_SCOPE, TokenExpired, authenticate
from core.db import reads_only
from core.web import json_error
from training.loader import SLUG_RE

api_bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_REFS = 1000


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@api_bp.before_request
def _reads_only() -> None:
    reads_only()  # the API answers questions; its few writes use writing()


@api_bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Any:
    return json_error(error.status, error.code, error.message)


def requires(*scopes: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Any one of ``scopes`` lets the caller in; the view decides how much it may see."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise ApiError(401, "unauthorized", "Send a token: 'Authorization: Bearer TOKEN'.")
            try:
                token = authenticate(secret.strip())
            except TokenExpired as exc:
                raise ApiError(
                    401, "token_expired",
                    f"The token expired on {exc.expired_at:%Y-%m-%d}; ask an administrator for "
                    "a new one.",
                ) from None  # fmt: skip
            if token is None:
                raise ApiError(401, "unauthorized", "The token is not valid or has been revoked.")
            if not token.scopes & set(scopes):
                wanted = " or ".join(repr(scope) for scope in scopes)
                raise ApiError(403, "forbidden", f"This token does not have the {wanted} scope.")
            g.api_token = token
            return view(*args, **kwargs)

        return wrapped

    return decorator


def _policy(slug: Any) -> PolicyRef:
    known = policies()
    if slug is None:
        if len(known) == 1:
            return known[0]
        names = ", ".join(p.slug for p in known) or "none published"
        raise ApiError(400, "policy_required", f"Say which policy with 'policy': {names}.")
    if not isinstance(slug, str) or len(slug) > 80 or not SLUG_RE.match(slug):
        raise ApiError(400, "invalid_policy", "'policy' must be a policy's slug.")
    for policy in known:
        if policy.slug == slug:
            return policy
    raise ApiError(404, "policy_not_found", f"There is no published policy {slug!r}.")


def _answers(policy: PolicyRef, refs: list[str]) -> dict[str, Answer]:
    try:
        return find_answers(policy, refs)
    except LookupError:
        raise ApiError(
            404, "policy_not_found", f"There is no published policy {policy.slug!r}."
        ) from None


def json_body() -> Any:
    """The request's JSON body, or an ApiError saying why there is none.

    Reading the body enforces MAX_CONTENT_LENGTH, chunked bodies included (413); JSON nested too
    deeply for the parser is as unreadable as malformed JSON (400), never a 500.
    """
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "Send JSON with 'Content-Type: application/json'."
        )
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A body without a length (chunked) is cut off silently at the limit: one more byte
        # waiting means it was longer, not that it ended exactly there.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "payload_too_large", "The body is too large.")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None


def _json(body: str | bytes) -> Response:
    return Response(body, mimetype="application/json")


def _ids_only(refs: list[str]) -> None:
    """A token that may not see emails may not look people up by email either.

    Answering an email with an id (or "not found") would let it test any address for membership
    and join ids to emails, so it names people by id only.
    """
    if PERSONAL_SCOPE not in g.api_token.scopes and not all(map(is_id, refs)):
        raise ApiError(
            400,
            "email_not_allowed",
            "This token may look people up by id only: use the person's id, not an email address.",
        )


def _visible(answer: Answer) -> Any:
    """The answer as this token may see it: in full, or without personal details."""
    return answer.doc if PERSONAL_SCOPE in g.api_token.scopes else status_only(answer.doc)


@api_bp.get("/people/<ref>/training-status")
@requires("training:read", "training:status")
def person_status(ref: str) -> Any:
    unknown = set(request.args) - {"policy"}
    if unknown:
        raise ApiError(
            400, "unknown_parameter", f"Unknown query parameter: {', '.join(sorted(unknown))}."
        )
    _ids_only([ref])
    answer = _answers(_policy(request.args.get("policy")), [ref]).get(ref)
    if answer is None:
        raise ApiError(404, "person_not_found", "Nobody has that id or email address.")
    return _json(encode(_visible(answer)))


@api_bp.post("/training-status/check")
@requires("training:read", "training:status")
def check() -> Any:
    body = json_body()
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
    _ids_only(cleaned)
    if "policy" in body and not isinstance(body["policy"], str):  # null too: leave it out instead
        raise ApiError(400, "invalid_policy", "'policy' must be a policy's slug.")
    answers = _answers(_policy(body.get("policy")), cleaned)
    personal = PERSONAL_SCOPE in g.api_token.scopes  # asked once, not once a person
    results: list[Any] = []
    all_trained = True
    for original, ref in zip(refs, cleaned, strict=True):
        answer = answers.get(ref)
        if answer is None:
            # An email asked about is not echoed to a token that may not see emails.
            echo = original if personal or isinstance(original, int | float) else None
            results.append(not_found(echo))
            all_trained = False
        else:
            results.append(answer.doc if personal else status_only(answer.doc))
            all_trained = all_trained and answer.trained
    # One encoding of the whole answer, from the answers' typed documents.
    return _json(encode(CheckDoc(all_trained, results)))


@api_bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(document())
