"""The personal data is assembled from what each package registers: every table that names a
person is covered, and the download holds the xAPI statements sent about the person."""

from __future__ import annotations

import ast

import pytest

from core.config import ROOT
from core.db import Base, db
from people.personal_data import register_personal_data, registry
from tests import lrs as lrs_server
from tests.conftest import Auth, run_worker
from tests.test_journey import VOLUNTEER_MODULES, read_modules
from xapi.outbox import statements as statements_of


def _names_a_person(table) -> list[str]:
    return [
        column.name
        for column in table.columns
        if column.name == "person_id"
        or any(fk.column.table.name == "person" for fk in column.foreign_keys)
    ]


def test_every_table_naming_a_person_is_personal_data_or_declared_not(app):
    """A new table with a ``person_id`` (or any reference to a person) must be in some package's
    part of the download and erasure, or be declared not personal data, with the reason."""
    parts = registry(app)
    covered = {table for part in parts.parts.values() for table in part.tables}
    naming = {t.name for t in Base.metadata.sorted_tables if _names_a_person(t)} | {"person"}
    assert naming - covered - set(parts.not_personal) == set()
    assert not covered & set(parts.not_personal), "a table is both personal and not"
    assert all(reason.strip() for reason in parts.not_personal.values())
    # Registered tables exist: a renamed table is not silently left uncovered.
    assert covered | set(parts.not_personal) <= set(Base.metadata.tables)


def test_erasure_runs_each_packages_part_in_the_order_it_always_had(app):
    erasers = [part.name for part in registry(app).ordered() if part.erase is not None]
    assert erasers == [
        "sign_in_attempts", "learning_platform_accounts", "second_factor", "stored_answers",
        "acknowledgements", "certificates", "account_applications", "webhook_deliveries",
        "xapi_statements", "reminders",
    ]  # fmt: skip
    # Evidence is checked against the audit log in the order it always was.
    finders = [part.name for part in registry(app).ordered() if part.evidence is not None]
    assert finders == ["acknowledgements", "certificates", "account_applications"]


def test_a_part_cannot_be_registered_twice(app):
    with pytest.raises(ValueError, match="registered twice"):
        register_personal_data(app, "certificates", tables=(), order=1)


def test_people_imports_no_other_domain_for_the_personal_data():
    """The download and erasure name no other domain: each registers its own part."""
    allowed = {"people", "audit", "core"}
    domains = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    for module in ("privacy.py", "personal_data.py"):
        tree = ast.parse((ROOT / "people" / module).read_text())
        imported = {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        } | {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert imported & domains <= allowed, module


@pytest.fixture
def app_config() -> dict:
    # An LRS that is down: statements are queued and kept, as the download must show them.
    return {
        "XAPI_ENDPOINT": f"http://127.0.0.1:{lrs_server.free_port()}/xAPI",
        "XAPI_USERNAME": "countersign",
        "XAPI_PASSWORD": "not-sent-anywhere",
    }


@pytest.mark.usefixtures("published")
def test_the_download_includes_the_persons_xapi_statements_as_sent(app, client, make_person):
    someone_else = make_person("volunteer", name="Otto Other", email="otto@ladysmith.example")
    read_modules(Auth(app, app.test_client()).as_person(someone_else), VOLUNTEER_MODULES[:1])
    xena = make_person("volunteer", name="Xena Learner", email="xena@ladysmith.example")
    learner = Auth(app, client).as_person(xena)
    read_modules(learner, VOLUNTEER_MODULES[:2])
    run_worker(app)  # builds each statement from its evidence and tries to send it

    data = learner.get("/account/data.json").get_json()

    with app.app_context():
        rows = statements_of(db.session, xena)
    statements = data["xapi_statements"]
    assert len(rows) == len(statements) == 2
    for row, statement in zip(rows, statements, strict=True):
        assert statement["statement_id"] == row.statement_id and statement["verb"] == row.verb
        assert statement["statement"] == row.payload  # exactly what the LRS is sent
        assert statement["sent_at"] is None and statement["queued_at"]
        assert statement["statement"]["actor"]["mbox"] == "mailto:xena@ladysmith.example"
    assert "otto" not in str(statements).lower()
