"""Configuration: safe defaults, then ``COUNTERSIGN_*`` environment variables, then a test mapping."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent


def defaults(instance_path: str) -> dict[str, Any]:
    return {
        "DATABASE_URL": f"sqlite:///{Path(instance_path) / 'countersign.db'}",
        # PostgreSQL with two roles: migrations (and restores) connect with this URL as the
        # tables' owner, the app with DATABASE_URL as DATABASE_APP_ROLE, which may read and write
        # rows but not alter, drop or disable anything. Empty: both use DATABASE_URL.
        "MIGRATION_DATABASE_URL": "",
        "DATABASE_APP_ROLE": "",
        "CONTENT_DIR": str(ROOT / "content"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": False,
        "SESSION_COOKIE_NAME": "countersign_session",
        # Secure cookies (with the __Host- prefix) and HSTS; None means: when BASE_URL is https.
        "SECURE_COOKIES": None,
        # Host names, besides BASE_URL's, that requests may be addressed to (comma-separated; a
        # leading dot allows subdomains). Others are refused with 400.
        "TRUSTED_HOSTS": "",
        # A signed-in session ends after this long without a request, and after SESSION_MAX_HOURS
        # whatever happens: a shared staffroom computer or a lost phone stops being signed in.
        "SESSION_IDLE_MINUTES": 60,
        "SESSION_MAX_HOURS": 12,
        # Changing how someone signs in needs a sign-in this recent (core.web.signed_in_recently).
        "RECENT_SIGN_IN_MINUTES": 10,
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,  # every request body, the API's included
        "IMPORT_MAX_BYTES": 1024 * 1024,  # a people CSV upload
        "MOODLE_MAX_BYTES": 1024 * 1024,  # a Moodle XML question file
        # Strict-Transport-Security max-age; None means a year when SECURE_COOKIES is on, else off.
        "HSTS_SECONDS": None,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "INVITE_MAX_AGE": 14 * 24 * 3600,
        "RESET_MAX_AGE": 3600,
        "SMTP_HOST": "",
        "SMTP_PORT": 587,
        "SMTP_USERNAME": "",
        "SMTP_PASSWORD": "",
        "SMTP_FROM": "",
        "SMTP_STARTTLS": True,
        "SMTP_ALLOW_PLAINTEXT": False,  # plain SMTP to another machine (a trusted relay only)
        "PAGE_SIZE": 50,
        "TIMEZONE": "Europe/London",  # how times are shown; they are stored in UTC
        # Links in emails and on screen are built from this, never from the request's Host header.
        "BASE_URL": "http://127.0.0.1:5000",
        # Number of reverse proxies in front of the app whose X-Forwarded-* headers to trust.
        "PROXY_COUNT": 0,
        # LTI 1.3: the tool's private key (PEM); made in the instance folder when not given.
        "LTI_PRIVATE_KEY_FILE": "",
        # xAPI: statements go to this Learning Record Store (its base URL, e.g.
        # https://lrs.example/xAPI/) with HTTP Basic credentials; empty means xAPI is off.
        "XAPI_ENDPOINT": "",
        "XAPI_USERNAME": "",
        "XAPI_PASSWORD": "",
        "XAPI_CA_FILE": "",  # trust only this CA (PEM) for the LRS's certificate
        # PostgreSQL on another machine without a verified TLS connection (a trusted network only).
        "DATABASE_ALLOW_PLAINTEXT": False,
        # Roles that must pass a second factor (authenticator app or passkey) after their
        # password, comma-separated; empty means none (for development only).
        "MFA_ROLES": "admin,slt,governor",
    }


# Settings that hold a secret can instead name a file holding it, ``COUNTERSIGN_<NAME>_FILE``: for
# systemd credentials (``LoadCredentialEncrypted=``, read from ``%d/<name>``) or any file only the
# app's user can read. The secret then never sits in the environment, where every process of the
# same user can read it in /proc.
# (``BACKUP_KEY_FILE`` is read by ``operations.keys`` itself, only when a backup is made or restored.)
SECRET_SETTINGS = (
    "SECRET_KEY", "AUDIT_KEY", "DATABASE_URL", "MIGRATION_DATABASE_URL", "SMTP_PASSWORD",
    "XAPI_PASSWORD",
)  # fmt: skip


def _secrets_from_files(app: Flask) -> None:
    for name in SECRET_SETTINGS:
        path = app.config.pop(f"{name}_FILE", None)
        if not path:
            continue
        if app.config.get(name) not in (None, "", defaults(app.instance_path).get(name)):
            raise ValueError(f"Set COUNTERSIGN_{name} or COUNTERSIGN_{name}_FILE, not both.")
        try:
            value = Path(str(path)).read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"COUNTERSIGN_{name}_FILE names {path}, which cannot be read: {exc.strerror}"
            ) from None
        if not value:
            raise ValueError(f"COUNTERSIGN_{name}_FILE names {path}, which is empty.")
        app.config[name] = value


def load(app: Flask, overrides: dict[str, Any] | None) -> None:
    # Everything the app creates (database, keys, exports) is private to its own user, whatever
    # the shell's umask: the database holds password hashes and personal data.
    os.umask(0o077)
    app.config.from_mapping(defaults(app.instance_path))
    # The conventional DATABASE_URL is honoured; COUNTERSIGN_DATABASE_URL wins over it.
    if os.environ.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    app.config.from_prefixed_env("COUNTERSIGN")
    if overrides:
        app.config.from_mapping(overrides)
    _secrets_from_files(app)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(Path(app.instance_path))
    _cookies(app)
    if app.config.get("HSTS_SECONDS") is None:
        app.config["HSTS_SECONDS"] = 365 * 24 * 3600 if app.config.get("SECURE_COOKIES") else 0
    for key in (
        "SESSION_IDLE_MINUTES",
        "SESSION_MAX_HOURS",
        "IMPORT_MAX_BYTES",
        "RECENT_SIGN_IN_MINUTES",
    ):
        _positive(app, key)
    _positive(app, "MOODLE_MAX_BYTES")
    if int(app.config["HSTS_SECONDS"]) < 0:
        raise ValueError("COUNTERSIGN_HSTS_SECONDS must be 0 (off) or a number of seconds")
    _connections_encrypted(app)
    # The cookie lasts no longer than the session may: the server-side check is what enforces it.
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=app.config["SESSION_MAX_HOURS"])


def is_loopback(name: str) -> bool:
    """``localhost`` or a literal loopback address: a connection that never leaves this machine.
    (Other names ending in ``.localhost`` may be looked up in DNS, so they do not count.)"""
    name = name.lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _last(value: Any) -> str:
    """A query parameter given once or several times: libpq takes the last."""
    if isinstance(value, tuple):
        return str(value[-1]) if value else ""
    return str(value or "")


VERIFIED_SSL = ("verify-full", "verify-ca")


def _plain_database_hosts(url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Where a PostgreSQL URL may reach without a verified TLS connection (libpq's
    ``sslmode=verify-full`` or ``verify-ca`` checks the server's certificate; anything less does
    not). Unix sockets and loopback addresses never leave the machine. What libpq would also take
    from outside the URL counts: ``hostaddr=`` and ``service=`` (a service file), and, with no host
    in the URL, ``PGHOST``, ``PGHOSTADDR``, ``PGSERVICE`` and ``PGSSLMODE`` in the environment."""
    env = os.environ if environ is None else environ
    try:
        parsed = make_url(url)
    except Exception:  # the engine refuses a malformed URL itself, before any connection
        return []
    if not parsed.drivername.startswith("postgres"):  # postgres://, postgresql+psycopg://, …
        return []
    query = parsed.query
    sslmode = _last(query.get("sslmode")) or env.get("PGSSLMODE", "")
    if sslmode in VERIFIED_SSL:
        return []
    for key in ("hostaddr", "service"):
        if query.get(key):
            return [f"{key}={_last(query[key])}"]
    named: Any = query.get("host") or parsed.host
    if not named:
        for key in ("PGHOSTADDR", "PGSERVICE"):
            if env.get(key):
                return [f"{key}={env[key]}"]
        named = env.get("PGHOST", "")
    hosts = list(named) if isinstance(named, tuple) else str(named).split(",")
    return [h for h in hosts if h and not h.startswith("/") and not is_loopback(h)]


def _connections_encrypted(app: Flask) -> None:
    """Refuse, at start, settings that would send personal data or credentials over the network
    unencrypted or to an unverified server: PostgreSQL on another machine needs
    ``sslmode=verify-full`` (or ``verify-ca``), and the LRS needs https (plain http only to this
    machine, for testing)."""
    if not _flag(app.config.get("DATABASE_ALLOW_PLAINTEXT")):
        for key in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
            plain = _plain_database_hosts(str(app.config.get(key) or ""))
            if plain:
                raise ValueError(
                    f"COUNTERSIGN_{key} reaches PostgreSQL on {plain[0]} without a verified TLS "
                    "connection: add ?sslmode=verify-full (and sslrootcert=/path/to/ca.pem unless "
                    "the system trusts its CA), or set COUNTERSIGN_DATABASE_ALLOW_PLAINTEXT=true "
                    "for a database on a trusted private network."
                )
    endpoint = str(app.config.get("XAPI_ENDPOINT") or "").strip()
    if endpoint and not xapi_endpoint_allowed(endpoint):
        raise ValueError(
            "COUNTERSIGN_XAPI_ENDPOINT must be an https:// address (plain http:// only to this "
            "machine): statements name the person and the LRS password goes with them."
        )


def xapi_endpoint_allowed(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback(parts.hostname or ""))


def is_https(app: Flask) -> bool:
    return urlsplit(str(app.config["BASE_URL"])).scheme.lower() == "https"


def _flag(value: Any) -> bool | None:
    """A setting that is on, off or unset, from a mapping or an environment variable."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return None
        if text in ("0", "false", "no", "off"):
            return False
        if text in ("1", "true", "yes", "on"):
            return True
        raise ValueError(f"COUNTERSIGN_SECURE_COOKIES must be true or false, not {value!r}")
    return bool(value)


def host_list(value: Any) -> list[str]:
    """``a.example, .b.example`` (or a list) as lower-case host names without ports."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    hosts = []
    for item in items:
        host = str(item).strip().lower()
        if host.startswith("[") and "]" in host:
            host = host[1 : host.index("]")]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host:
            hosts.append(host)
    return hosts


def _cookies(app: Flask) -> None:
    """Under an https address every cookie is Secure, and the session cookie's name carries the
    __Host- prefix: a browser then accepts it only over https, for this host alone and the whole
    path, so neither a plain-http page nor a sibling subdomain can plant or overwrite it."""
    secure = _flag(app.config.get("SECURE_COOKIES"))
    app.config["SECURE_COOKIES"] = is_https(app) if secure is None else secure
    # Flask's own TRUSTED_HOSTS would be fixed at start; the check in core.web follows BASE_URL.
    app.config["ALLOWED_HOSTS"] = host_list(app.config.get("TRUSTED_HOSTS"))
    app.config["TRUSTED_HOSTS"] = None
    if app.config["SECURE_COOKIES"]:
        app.config["SESSION_COOKIE_SECURE"] = True
        name = app.config["SESSION_COOKIE_NAME"]
        if not name.startswith(("__Host-", "__Secure-")):
            app.config["SESSION_COOKIE_NAME"] = f"__Host-{name}"
        app.config["SESSION_COOKIE_PATH"] = "/"
        app.config["SESSION_COOKIE_DOMAIN"] = None


def _positive(app: Flask, key: str) -> None:
    value = app.config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"COUNTERSIGN_{key} must be a positive number, not {value!r}")


# Files Countersign makes in the instance folder that hold secrets or personal data.
INSTANCE_FILES = (
    "secret_key", "audit_key", "lti_private_key.pem", "demo-people.txt", "backup_key",
)  # fmt: skip


def _make_private(path: Path, mode: int) -> None:
    """Narrow the permissions of a file or folder we own; leave anyone else's alone."""
    try:
        info = path.stat()
    except OSError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
        path.chmod(mode)


def protect_files(app: Flask) -> None:
    """The instance folder 0700, and the SQLite database and key files in it 0600, including
    those made before this rule by an earlier version (the umask covers new ones)."""
    instance = Path(app.instance_path)
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_private(instance, 0o700)
    for name in INSTANCE_FILES:
        _make_private(instance / name, 0o600)
    url = str(app.config["DATABASE_URL"])
    if url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            for suffix in ("", "-wal", "-shm", "-journal"):
                _make_private(Path(database + suffix), 0o600)


def _instance_secret(instance: Path) -> str:
    """A random key kept in the instance folder, made on first start; never in the repository."""
    path = instance / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except PermissionError:
        # A command run as another user than the app's (migrations as the schema owner, the
        # audit head recorder) may not read the app's folder. It serves no pages and signs no
        # links, so a key for this run alone does; the app itself, owning the folder, never
        # gets here.
        if instance.stat().st_uid != os.geteuid():
            return secrets.token_hex(32)
        raise
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_text().strip()
