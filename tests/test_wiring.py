"""How the application is put together: each package registers itself, and the bottom layer
(``core``) knows no domain."""

from __future__ import annotations

import ast
import importlib

import app as app_module
from app import PACKAGES, create_app
from core.config import ROOT


def _imported_packages(path) -> set[str]:
    """The top-level packages a module imports anywhere in it (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_domain_package():
    domain = set(PACKAGES)
    found = {
        f"{path.name} imports {name}"
        for path in sorted((ROOT / "core").glob("*.py"))
        for name in _imported_packages(path) & domain
    }
    assert not found


def test_create_app_registers_packages_only_through_their_init_app():
    """``create_app`` names no blueprint, command or listener: it imports no domain package."""
    assert not _imported_packages(ROOT / "app.py") & set(PACKAGES)
    for name in PACKAGES:
        assert callable(importlib.import_module(name).init_app), name


def test_every_blueprint_belongs_to_a_registered_package():
    application = create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": "sqlite://"})
    owners = {bp.import_name.split(".")[0] for bp in application.blueprints.values()}
    assert owners <= set(PACKAGES)
    commands = {
        getattr(command.callback, "__module__", "").split(".")[0]
        for command in application.cli.commands.values()
    }
    assert commands <= set(PACKAGES) | {"core"}


def test_importing_the_factory_builds_no_app():
    """Tests and migrations import ``create_app``; only ``wsgi`` builds the served app."""
    assert not hasattr(app_module, "app")
    wsgi = ast.parse((ROOT / "wsgi.py").read_text())
    assigned = {t.id for node in wsgi.body if isinstance(node, ast.Assign) for t in node.targets}
    assert assigned == {"app"}


def test_views_take_roles_required_from_people_auth_not_from_another_view_module():
    """Who may open a page is a rule of sign-in (``people.auth``), not of the people pages."""
    from people.auth import roles_required

    assert roles_required.__module__ == "people.auth"
    found = []
    for name in PACKAGES:
        for path in sorted((ROOT / name).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "people.views":
                    if any(alias.name == "roles_required" for alias in node.names):
                        found.append(str(path.relative_to(ROOT)))
    assert not found
