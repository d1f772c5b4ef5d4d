"""Error pages: JSON in the API's one shape for paths under /api/, an HTML page elsewhere."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from core.db import db
from core.security_log import flag

API_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
    429: "too_many_requests", 500: "internal_error",
}  # fmt: skip


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def json_error(status: int, code: str, message: str) -> Any:
    """The API's one error shape. The API never answers with an HTML page."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="countersign"'
    return response


def is_api() -> bool:
    """Whether this request is the API's: it answers JSON, never a page, and has no session."""
    return is_api_path(request.path)


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def init_app(app: Flask) -> None:
    """Answer every HTTP error, and a failed CSRF check, in the shape the path calls for."""

    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Any:
        flag("csrf_failed", error.description or "")
        if is_api():
            return json_error(400, "bad_request", "This request needs a token, not a form.")
        return (
            render_template(
                "error.html",
                code=400,
                title="This form has expired",
                message="The form was out of date or incomplete, so nothing was saved. "
                "Go back, reload the page and try again.",
            ),
            400,
        )

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Any:
        if is_api():
            if (error.code or 500) >= 500:
                db.session.rollback()
            code = error.code or 500
            message = {
                404: "There is no such API address. See /api/v1/openapi.json.",
                405: "This address does not accept that method.",
                413: "The body is too large.",
                500: "Something went wrong; nothing was changed.",
            }.get(code, error.description or error.name)
            return json_error(code, API_CODES.get(code, "error"), message)
        titles = {
            404: ("Page not found", "There is no page at this address. Check it, or start again "
                  "from your training page."),
            403: ("You do not have access", "Your role does not give you access to this page."),
            413: ("That file is too large", "Nothing was imported or saved. Go back and "
                  f"choose a file of at most {_megabytes(current_app.config['MAX_CONTENT_LENGTH'])}."),
            405: ("That did not work", "This page cannot be used that way."),
            400: ("That did not work", "The request could not be understood. Go back and try again."),
            500: ("Something went wrong", "Nothing was saved. Try again; if it keeps happening, "
                  "tell your administrator what you were doing."),
        }  # fmt: skip
        if (error.code or 500) >= 500:
            db.session.rollback()  # the page itself must be able to read the database
        title, message = titles.get(error.code or 500, (error.name, error.description))
        return render_template("error.html", code=error.code, title=title, message=message), (
            error.code or 500
        )
