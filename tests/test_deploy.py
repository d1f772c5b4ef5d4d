"""The example deployment in deploy/: every systemd unit is hardened the same way, the schema owner's
login never reaches a process of the app's user, every command a unit runs exists, backups are
encrypted before they are kept, and the audit head is recorded by a user other than the app's."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.db import normalise_url

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
APP_USER = "countersign"

HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "InaccessiblePaths": "-/srv/countersign/.git",
    "PrivateMounts": "yes",
    "RemoveIPC": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallArchitectures": "native",
}
SECTIONS = {"Unit", "Service", "Timer", "Install"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections, continued lines joined, repeated keys kept in
    order. Anything else (a line outside a section, an unknown section, a line without "=") fails."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        where = f"{path.name}:{number}"
        if line.startswith("["):
            name = line.strip("[]")
            assert line.endswith("]") and name in SECTIONS, f"{where}: bad section {line!r}"
            assert name not in sections, f"{where}: section {name} twice"
            current = sections[name] = {}
            continue
        assert current is not None, f"{where}: a setting outside a section"
        key, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z]+", key.strip()), f"{where}: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, f"{path.name}: ends with a continued line"
    return sections


def services() -> dict[str, dict[str, list[str]]]:
    found = {p.name: parse_unit(p)["Service"] for p in sorted(UNITS.glob("*.service"))}
    assert len(found) >= 6
    return found


def one(service: dict[str, list[str]], key: str) -> str | None:
    values = service.get(key)
    if not values:
        return None
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def commands(service: dict[str, list[str]]) -> list[list[str]]:
    """Every command line a service runs, shell scripts opened up into their commands."""
    found = []
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload"):
        for value in service.get(key, []):
            words = shlex.split(value.replace("$$", "$").replace("%%", "%"))
            words[0] = words[0].lstrip("-@:+!")
            if words[:2] == ["/bin/sh", "-c"]:
                found.append(words[:1])
                script = words[2].replace("\\\n", " ")
                for part in re.split(r"[;|&]+", script):
                    part = part.strip()
                    if part.startswith("/"):
                        found.append(shlex.split(part))
            else:
                found.append(words)
    return found


# --- hardening ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_every_unit_is_hardened(name):
    service = parse_unit(UNITS / name)["Service"]
    for key, value in HARDENING.items():
        found = service.get(key) if isinstance(value, list) else one(service, key)
        if key == "SystemCallFilter" and name == "countersign.service":
            # The web server's password checks lower their own thread's priority.
            value = [*value, "setpriority"]
        assert found == value, f"{name}: {key}={found!r}, want {value!r}"
    assert one(service, "User") and one(service, "User") != "root", name
    assert one(service, "UMask") in {"0077", "0022"}


def test_every_service_has_a_timer_or_is_started_by_the_app():
    started = {"countersign.service", "countersign-migrate.service", "countersign-worker.service"}
    for path in UNITS.glob("*.service"):
        if path.name not in started:
            timer = parse_unit(path.with_suffix(".timer"))
            assert timer["Timer"].get("OnCalendar") and timer["Install"]["WantedBy"] == [
                "timers.target"
            ]
    app = parse_unit(UNITS / "countersign.service")["Unit"]
    assert "countersign-migrate.service" in app["Requires"]


# --- the schema owner's login ------------------------------------------------------------------


def _env_example(name: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_no_process_of_the_app_user_has_the_owners_login():
    for name, service in services().items():
        env_files = service.get("EnvironmentFile", [])
        credentials = service.get("LoadCredential", []) + service.get("SetCredential", [])
        if one(service, "User") == APP_USER:
            assert not any("migrate" in f for f in env_files), name
            assert not any("owner" in c or "migrate" in c for c in credentials), name
    migrate = services()["countersign-migrate.service"]
    assert one(migrate, "User") == one(migrate, "Group") == "countersign-migrate"
    assert migrate["EnvironmentFile"] == ["/etc/countersign/migrate.env"]
    assert "ReadWritePaths" not in migrate  # it writes nothing, the app's keys included

    owner = _env_example("migrate.env.example")
    for key in ("COUNTERSIGN_MIGRATION_DATABASE_URL", "COUNTERSIGN_DATABASE_URL"):
        url = make_url(normalise_url(owner[key]))
        # Peer authentication over the local socket: there is no password to steal.
        assert url.username == "countersign_owner" and url.password is None
        assert url.host is None and url.query["host"].startswith("/")
    assert owner["COUNTERSIGN_DATABASE_APP_ROLE"] == "countersign_app"
    app_env = _env_example("countersign.env.example")
    assert "countersign_owner" not in " ".join(app_env.values())
    setup = (DEPLOY / "postgresql-setup.sql").read_text()
    assert "\\password countersign_owner\n" not in setup
    assert "countersign     countersign-migrate     countersign_owner" in setup
    assert "peer map=countersign" in setup


def test_a_command_run_as_another_user_gets_a_secret_key_of_its_own():
    """Migrations and the head recorder run as users that cannot read the app's instance
    folder; they sign nothing, so a key for that run is made instead of failing. The app's own
    user, owning the folder, still reads its key."""
    from core.config import _instance_secret

    if os.geteuid() != 0:
        pytest.skip("needs root, to act as another user")
    with tempfile.TemporaryDirectory() as base:  # reachable by another user, unlike tmp_path
        Path(base).chmod(0o755)
        instance = Path(base) / "instance"
        instance.mkdir(mode=0o700)
        (instance / "secret_key").write_text("the-apps-own-key")
        assert _instance_secret(instance) == "the-apps-own-key"
        os.seteuid(65534)
        try:
            first, second = _instance_secret(instance), _instance_secret(instance)
        finally:
            os.seteuid(0)
        assert len(first) == 64 and first != second != "the-apps-own-key"
        assert sorted(p.name for p in instance.iterdir()) == ["secret_key"]


# --- the commands the units run ----------------------------------------------------------------


def test_every_command_a_unit_runs_exists():
    from app import create_app

    application = create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": "sqlite://"})
    runner = application.test_cli_runner()
    venv = "/srv/countersign/.venv/bin/"
    checked = 0
    for name, service in services().items():
        assert one(service, "WorkingDirectory") == "/srv/countersign", name
        for words in commands(service):
            program = words[0]
            if program.startswith(venv):
                assert (ROOT / ".venv" / "bin" / program.removeprefix(venv)).exists(), program
                if program.endswith("/flask"):
                    sub = list(itertools.takewhile(lambda w: not w.startswith("-"), words[1:]))
                    helped = runner.invoke(args=[*sub, "--help"])
                    assert helped.exit_code == 0, f"{name}: flask {' '.join(sub)}"
                    for option in (w for w in words[1:] if w.startswith("--")):
                        assert option in helped.output, f"{name}: {option}"
                    checked += 1
                elif program.endswith("/gunicorn"):
                    from core import access_log

                    assert words[-1] == "wsgi:app" and access_log.Redacting
            else:
                assert program.startswith(("/bin/", "/usr/bin/")), f"{name}: {program}"
                assert shutil.which(Path(program).name), f"{name}: {program} is not installed"
    assert checked >= 5  # migrate, worker, backup, erase, audit head


def test_the_backup_is_encrypted_to_the_operator_and_no_plain_copy_is_kept():
    backup = services()["countersign-backup.service"]
    run = {words[0]: words for words in commands(backup)}
    flask = run["/srv/countersign/.venv/bin/flask"]
    plain = flask[flask.index("--output") + 1]
    assert plain.startswith("/tmp/") and one(backup, "PrivateTmp") == "yes"
    gpg = run["/usr/bin/gpg"]
    assert "--encrypt" in gpg and gpg[-1] == plain
    assert gpg[gpg.index("--recipient-file") + 1] == "/etc/countersign/backup-recipient.asc"
    assert gpg[gpg.index("--output") + 1].startswith("/var/backups/countersign/")
    assert gpg[gpg.index("--output") + 1].endswith(".gpg")
    encrypt, cleanup = backup["ExecStartPost"]
    assert encrypt.rstrip("'").endswith(f"rm -f {plain}")
    assert "/var/backups/countersign" not in plain
    assert "*.tar.gz.gpg" in cleanup and "-mtime +35" in cleanup


def test_only_root_writes_the_backup_store():
    """Code running as the app's user (which can read the backup key) cannot replace, remove or
    add backups: the encrypted copies are made and pruned by root ("!": root's user, the unit's
    sandbox), in a folder root owns; the app's user only writes its private /tmp."""
    backup = services()["countersign-backup.service"]
    assert one(backup, "User") == APP_USER
    (make,) = backup["ExecStart"]
    assert not make.startswith(("!", "+")) and "/var/backups" not in make
    for post in backup["ExecStartPost"]:
        assert post.startswith("!") and not post.startswith("!!")
    readme = (ROOT / "README.md").read_text()
    assert "install -d -o root -g root -m 0700 /var/backups/countersign" in readme


def test_the_head_is_recorded_by_another_user_where_the_app_cannot_write():
    unit = services()["countersign-audit-head.service"]
    assert one(unit, "User") == "countersign-audit" != APP_USER
    assert one(unit, "StateDirectory") == "countersign-audit"
    assert one(unit, "StateDirectoryMode") == "0755" and one(unit, "UMask") == "0022"
    (words,) = commands(unit)
    assert words[1:] == ["audit", "head", "--record"]
    head_file = _env_example("countersign.env.example")["COUNTERSIGN_AUDIT_HEAD_FILE"]
    assert head_file.startswith("/var/lib/countersign-audit/")
    for name, service in services().items():
        if one(service, "User") == APP_USER:
            writable = " ".join(service.get("ReadWritePaths", []))
            assert "/var/lib/countersign-audit" not in writable, name


# --- systemd and the kernel agree --------------------------------------------------------------


def test_systemd_units_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    code, etc = tmp_path / "srv", tmp_path / "etc"
    (code / "instance").mkdir(parents=True)
    etc.mkdir()
    (code / ".venv").symlink_to(ROOT / ".venv")
    for name in ("countersign.env", "migrate.env"):
        (etc / name).write_text("")
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text()
        for old, new in (("/srv/countersign", str(code)), ("/etc/countersign", str(etc)),
                         ("/var/backups/countersign", str(tmp_path))):  # fmt: skip
            text = text.replace(old, new)
        # Users that need not exist on this machine.
        text = re.sub(r"^(User|Group)=.*$", r"\1=daemon", text, flags=re.MULTILINE)
        (units / unit.name).write_text(text)
    result = subprocess.run(  # noqa: S603 - fixed arguments
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.iterdir())],
        capture_output=True, text=True, timeout=60, cwd=units,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_rates_every_unit_well_exposed_at_most_2(tmp_path):
    """`systemd-analyze security` scores what a compromised service could still do, from 0 (least)
    to 10; every unit stays at 2 or below ("OK")."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    for unit in UNITS.glob("*.service"):
        text = re.sub(r"^(User|Group)=.*$", r"\1=daemon", unit.read_text(), flags=re.MULTILINE)
        (tmp_path / unit.name).write_text(text)
        result = subprocess.run(  # noqa: S603 - fixed arguments
            ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager",
             str(tmp_path / unit.name)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            pytest.skip("this systemd-analyze cannot rate unit files offline (systemd 250+)")
        assert result.returncode == 0, f"{unit.name}: {result.stdout.splitlines()[-1:]}"


MDWE = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE
    sys.exit(77)
from weasyprint import HTML
pdf = HTML(string="<h1>Certificate</h1><p style='font-family: serif'>Ms Smith</p>").write_pdf()
from app import create_app
create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": "sqlite://"})
print(len(pdf))
"""


def test_pdfs_render_with_write_xor_execute_memory(tmp_path):
    """MemoryDenyWriteExecute is on for the app: WeasyPrint (cffi) must render without memory that
    is both writable and executable. The kernel's own switch for the same rule checks it."""
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-c", MDWE], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 1000
