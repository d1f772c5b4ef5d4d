"""Secrets can come from files only the app's user reads, such as systemd credentials, rather
than the environment every process of that user can read (ASVS V13.3.1)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import create_app
from audit.log import audit_key
from core.db import db
from people.models import Person

BASE = {"TESTING": True, "BASE_URL": "http://countersign.test", "MFA_ROLES": ""}


def test_secret_settings_are_read_from_the_files_their_FILE_settings_name(  # noqa: N802
    tmp_path, monkeypatch
) -> None:
    secrets = tmp_path / "credentials"
    secrets.mkdir(mode=0o700)
    (secrets / "secret_key").write_text("k" * 64 + "\n")
    (secrets / "audit_key").write_text("audit-key-from-a-credential\n")
    (secrets / "smtp_password").write_text("mail-password\n")
    (secrets / "database_url").write_text(f"sqlite:///{tmp_path / 'from-file.db'}\n")
    for name in ("SECRET_KEY", "AUDIT_KEY", "SMTP_PASSWORD", "DATABASE_URL"):
        monkeypatch.setenv(f"COUNTERSIGN_{name}_FILE", str(secrets / name.lower()))
    app = create_app(dict(BASE))
    assert app.config["SECRET_KEY"] == "k" * 64
    assert app.config["SMTP_PASSWORD"] == "mail-password"
    assert app.config["DATABASE_URL"].endswith("from-file.db")
    assert "SMTP_PASSWORD_FILE" not in app.config
    with app.app_context():
        assert audit_key() == b"audit-key-from-a-credential"
        from core.migrate import upgrade

        upgrade()
        assert db.session.scalars(select(Person)).all() == []
    assert (tmp_path / "from-file.db").exists()


def test_a_secret_given_twice_or_a_missing_file_stops_the_app_with_a_message(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("COUNTERSIGN_SMTP_PASSWORD_FILE", str(tmp_path / "absent"))
    config = {**BASE, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "SECRET_KEY": "x" * 32}
    with pytest.raises(ValueError, match="COUNTERSIGN_SMTP_PASSWORD_FILE names .*cannot be read"):
        create_app(dict(config))
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("COUNTERSIGN_SMTP_PASSWORD_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="which is empty"):
        create_app(dict(config))
    (tmp_path / "pw").write_text("from-file")
    monkeypatch.setenv("COUNTERSIGN_SMTP_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("COUNTERSIGN_SMTP_PASSWORD", "from-environment")
    with pytest.raises(ValueError, match="not both"):
        create_app(dict(config))
