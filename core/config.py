"""Configuration: safe defaults, then ``COUNTERSIGN_*`` environment variables, then a test mapping."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


def defaults(instance_path: str) -> dict[str, Any]:
    return {
        "DATABASE_URL": f"sqlite:///{Path(instance_path) / 'countersign.db'}",
        "CONTENT_DIR": str(ROOT / "content"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": False,
        "SESSION_COOKIE_NAME": "countersign_session",
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "INVITE_MAX_AGE": 14 * 24 * 3600,
        "RESET_MAX_AGE": 3600,
        "SMTP_HOST": "",
        "SMTP_PORT": 587,
        "SMTP_USERNAME": "",
        "SMTP_PASSWORD": "",
        "SMTP_FROM": "",
        "SMTP_STARTTLS": True,
        "PAGE_SIZE": 50,
        "TIMEZONE": "Europe/London",  # how times are shown; they are stored in UTC
        # Links in emails and on screen are built from this, never from the request's Host header.
        "BASE_URL": "http://127.0.0.1:5000",
        # Number of reverse proxies in front of the app whose X-Forwarded-* headers to trust.
        "PROXY_COUNT": 0,
    }


def load(app: Flask, overrides: dict[str, Any] | None) -> None:
    app.config.from_mapping(defaults(app.instance_path))
    # The conventional DATABASE_URL is honoured; COUNTERSIGN_DATABASE_URL wins over it.
    if os.environ.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    app.config.from_prefixed_env("COUNTERSIGN")
    if overrides:
        app.config.from_mapping(overrides)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(Path(app.instance_path))
    if app.config.get("SECURE_COOKIES"):
        app.config["SESSION_COOKIE_SECURE"] = True


def _instance_secret(instance: Path) -> str:
    """A random key kept in the instance folder, made on first start; never in the repository."""
    path = instance / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    instance.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_text().strip()
