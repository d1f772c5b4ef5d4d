"""The headers every response carries: a strict content security policy, no framing (except an
embedded session's platform), no caching of pages, and HSTS."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from core.sessions import embedding_origins

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)


def init_app(app: Flask) -> None:
    @app.after_request
    def _headers(response: Any) -> Any:
        headers = response.headers
        present = {name.lower() for name, _ in headers}
        framers = embedding_origins()
        for name, value in SECURITY_HEADERS:
            if name.lower() in present or (framers and name == "X-Frame-Options"):
                continue
            if framers and name == "Content-Security-Policy":
                value = value.replace(
                    "frame-ancestors 'none'", "frame-ancestors " + " ".join(framers)
                )
            headers.add(name, value)
        if "cache-control" not in present and request.endpoint != "static":
            # Pages show personal records: never keep them in shared caches or the back button.
            headers.add("Cache-Control", "no-store")
        hsts = int(current_app.config["HSTS_SECONDS"])
        if hsts and "strict-transport-security" not in present:
            headers.add("Strict-Transport-Security", f"max-age={hsts}; includeSubDomains")
        return response
