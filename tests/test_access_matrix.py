"""Who may do what, for every route the app serves.

The matrix below has one row per route and method (read from ``app.url_map``, so a route added
without a row fails here, naming it) and one column per role plus anonymous visitors. Each cell is
the answer that person gets, with real URL arguments: records made once per database backend.

Cells: a status code, or ``L`` for "redirected to sign in". State-changing requests carry a valid
CSRF token but an empty form, so a person allowed in meets the form's own validation (400) or an
action that is safe to repeat, and a person refused is stopped before anything happens.

Other people's records (quiz attempts, certificates, applications) answer 404, not 403, to those
who may not see them, so their existence is not revealed.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from api.models import ApiToken, Webhook
from api.tokens import create_token
from approvals.models import AccountApplication, SocialAccount
from approvals.rules import ApplicationData, decide, record_account, submit_application
from certificates.issuing import issue_due
from certificates.models import Certificate
from core.config import ROOT
from core.db import Base, db
from lti.models import LtiDeployment, LtiPlatform
from people.auth import INVITE, RESET, make_link_token
from people.models import Person, PersonRole, PersonSchool
from people.service import check_password
from quizzes.models import QuizAttempt
from tests.conftest import (
    BACKENDS,
    CHEAP_HASH_METHOD,
    PASSWORD,
    Auth,
    _truncate_postgres,
    complete_modules,
    csrf_token,
    train_people,
    wrong_answers,
)
from training.cli import publish_all
from training.models import Acknowledgement, Policy, ReadReceipt

ROLES = ("staff", "governor", "volunteer", "parent", "slt", "admin")
COLUMNS = ("anonymous", *ROLES)
CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
POLICY = "social-media-policy"
MODULE = "scope"
SCHOOL = "infant"

Cell = int | str
L = "login"  # redirected to the sign-in page

# One row per route and method. ``whose`` says whose record the URL names when that matters:
# "own" is the requester's own record, "other" someone else's.
#
#  (endpoint, method, whose)                               anon staff  gov  vol  par  slt admin
MATRIX: dict[tuple[str, str, str], tuple[Cell, Cell, Cell, Cell, Cell, Cell, Cell]] = {
    # signing in and the person's own account
    ("auth.sign_in", "GET", ""):                            (200, 302, 302, 302, 302, 302, 302),
    ("auth.sign_in", "POST", ""):                           (400, 302, 302, 302, 302, 302, 302),
    ("auth.sign_out", "POST", ""):                          (302, 302, 302, 302, 302, 302, 302),
    ("auth.forgot_password", "GET", ""):                    (200, 200, 200, 200, 200, 200, 200),
    ("auth.forgot_password", "POST", ""):                   (400, 400, 400, 400, 400, 400, 400),
    ("auth.accept_invite", "GET", ""):                      (200, 200, 200, 200, 200, 200, 200),
    ("auth.accept_invite", "POST", ""):                     (400, 400, 400, 400, 400, 400, 400),
    ("auth.reset_password", "GET", ""):                     (200, 200, 200, 200, 200, 200, 200),
    ("auth.reset_password", "POST", ""):                    (400, 400, 400, 400, 400, 400, 400),
    ("auth.change_password", "GET", ""):                    (L,   200, 200, 200, 200, 200, 200),
    ("auth.change_password", "POST", ""):                   (L,   400, 400, 400, 400, 400, 400),
    ("auth.my_data", "GET", ""):                            (L,   200, 200, 200, 200, 200, 200),
    ("auth.sign_out_others", "POST", ""):                   (L,   302, 302, 302, 302, 302, 302),
    # the second step of signing in: only for a browser half-way through (others start again)
    ("mfa.verify", "GET", ""):                              (302, 302, 302, 302, 302, 302, 302),
    ("mfa.verify", "POST", ""):                             (302, 302, 302, 302, 302, 302, 302),
    ("mfa.verify_passkey", "POST", ""):                     (302, 302, 302, 302, 302, 302, 302),
    ("mfa.recover", "POST", ""):                            (302, 302, 302, 302, 302, 302, 302),
    ("mfa.enrol", "GET", ""):                               (302, 302, 302, 302, 302, 302, 302),
    ("mfa.enrol", "POST", ""):                              (302, 302, 302, 302, 302, 302, 302),
    ("mfa.enrol_with_passkey", "POST", ""):                 (302, 302, 302, 302, 302, 302, 302),
    ("mfa.static", "GET", ""):                              (200, 200, 200, 200, 200, 200, 200),
    # the person's own second factor
    ("mfa.account", "GET", ""):                             (L,   200, 200, 200, 200, 200, 200),
    ("mfa.add_totp", "GET", ""):                            (L,   200, 200, 200, 200, 200, 200),
    ("mfa.add_totp", "POST", ""):                           (L,   400, 400, 400, 400, 400, 400),
    ("mfa.add_passkey", "GET", ""):                         (L,   200, 200, 200, 200, 200, 200),
    ("mfa.add_passkey", "POST", ""):                        (L,   400, 400, 400, 400, 400, 400),
    ("mfa.remove", "POST", "other"):                        (L,   302, 302, 302, 302, 302, 302),
    ("mfa.renew_codes", "POST", ""):                        (L,   302, 302, 302, 302, 302, 302),
    # the learner's journey: every signed-in person, on their own records only
    ("training.dashboard", "GET", ""):                      (L,   200, 200, 200, 200, 200, 200),
    ("training.module", "GET", ""):                         (L,   200, 200, 200, 200, 200, 200),
    ("training.mark_read", "POST", ""):                     (L,   302, 302, 302, 302, 302, 302),
    ("training.full_policy", "GET", ""):                    (L,   200, 200, 200, 200, 200, 200),
    ("training.sign", "GET", ""):                           (L,   302, 302, 302, 302, 302, 302),
    ("training.sign", "POST", ""):                          (L,   302, 302, 302, 302, 302, 302),
    ("training.signed", "GET", ""):                         (L,   200, 200, 200, 200, 200, 200),
    ("training.history", "GET", ""):                        (L,   200, 200, 200, 200, 200, 200),
    ("quiz.intro", "GET", ""):                              (L,   200, 200, 200, 200, 200, 200),
    ("quiz.intro", "POST", ""):                             (L,   302, 302, 302, 302, 302, 302),
    ("quiz.attempt", "GET", "own"):                         (L,   302, 302, 302, 302, 302, 302),
    ("quiz.attempt", "POST", "own"):                        (L,   303, 303, 303, 303, 303, 303),
    ("quiz.attempt", "GET", "other"):                       (L,   404, 404, 404, 404, 404, 404),
    ("quiz.attempt", "POST", "other"):                      (L,   404, 404, 404, 404, 404, 404),
    ("quiz.result", "GET", "own"):                          (L,   200, 200, 200, 200, 200, 200),
    ("quiz.result", "GET", "other"):                        (L,   404, 404, 404, 404, 404, 404),
    # quiz authoring: SLT and administrators
    ("quiz.banks", "GET", ""):                              (L,   403, 403, 403, 403, 200, 200),
    ("quiz.bank", "GET", ""):                               (L,   403, 403, 403, 403, 200, 200),
    # certificates: one's own; governors, SLT and administrators anyone's
    ("certificates.verify", "GET", ""):                     (200, 200, 200, 200, 200, 200, 200),
    ("certificates.download", "GET", "own"):                (L,   200, 200, 200, 200, 200, 200),
    ("certificates.download", "GET", "other"):              (L,   404, 200, 404, 404, 200, 200),
    ("certificates.index", "GET", ""):                      (L,   403, 200, 403, 403, 200, 200),
    ("certificates.school_zip", "GET", ""):                 (L,   403, 200, 403, 403, 200, 200),
    # reports: governors, SLT and administrators read
    ("reports.index", "GET", ""):                           (L,   403, 200, 403, 403, 200, 200),
    ("reports.people", "GET", ""):                          (L,   403, 200, 403, 403, 200, 200),
    ("reports.people_csv", "GET", ""):                      (L,   403, 200, 403, 403, 200, 200),
    ("reports.person", "GET", "other"):                     (L,   403, 200, 403, 403, 200, 200),
    ("reports.evidence_pack", "GET", ""):                   (L,   403, 200, 403, 403, 200, 200),
    # social media accounts: staff apply; SLT decide; administrators record; governors read
    ("approvals.apply", "GET", ""):                         (L,   200, 403, 403, 403, 200, 200),
    ("approvals.apply", "POST", ""):                        (L,   400, 403, 403, 403, 400, 400),
    ("approvals.applications", "GET", ""):                  (L,   200, 200, 403, 403, 200, 200),
    ("approvals.application", "GET", "other"):              (L,   404, 200, 403, 403, 200, 200),
    ("approvals.application", "POST", "other"):             (L,   404, 403, 403, 403, 400, 400),
    ("approvals.record", "POST", "other"):                  (L,   403, 403, 403, 403, 403, 302),
    ("approvals.register_page", "GET", ""):                 (L,   403, 200, 403, 403, 200, 200),
    ("approvals.account", "GET", ""):                       (L,   403, 200, 403, 403, 200, 200),
    ("approvals.account", "POST", ""):                      (L,   403, 403, 403, 403, 403, 400),
    # administrators: people, API tokens, webhooks, xAPI
    ("admin.people", "GET", ""):                            (L,   403, 403, 403, 403, 403, 200),
    ("admin.new_person", "GET", ""):                        (L,   403, 403, 403, 403, 403, 200),
    ("admin.new_person", "POST", ""):                       (L,   403, 403, 403, 403, 403, 400),
    ("admin.person", "GET", "other"):                       (L,   403, 403, 403, 403, 403, 200),
    ("admin.person", "POST", "other"):                      (L,   403, 403, 403, 403, 403, 400),
    ("admin.deactivate_person", "GET", "other"):            (L,   403, 403, 403, 403, 403, 200),
    ("admin.deactivate_person", "POST", "other"):           (L,   403, 403, 403, 403, 403, 302),
    ("admin.reactivate_person", "POST", "other"):           (L,   403, 403, 403, 403, 403, 302),
    ("admin.sign_out_everywhere", "GET", "other"):          (L,   403, 403, 403, 403, 403, 200),
    ("admin.sign_out_everywhere", "POST", "other"):         (L,   403, 403, 403, 403, 403, 302),
    ("admin.invite_person", "POST", "other"):               (L,   403, 403, 403, 403, 403, 200),
    # erasing is refused (409) while the person is active or within the retention period
    ("admin.erase", "GET", "other"):                        (L,   403, 403, 403, 403, 403, 409),
    ("admin.erase", "POST", "other"):                       (L,   403, 403, 403, 403, 403, 409),
    ("admin.invite_all", "POST", ""):                       (L,   403, 403, 403, 403, 403, 200),
    ("mfa.admin_reset", "GET", "other"):                    (L,   403, 403, 403, 403, 403, 200),
    ("mfa.admin_reset", "POST", "other"):                   (L,   403, 403, 403, 403, 403, 302),
    ("admin.import_page", "GET", ""):                       (L,   403, 403, 403, 403, 403, 200),
    ("admin.import_page", "POST", ""):                      (L,   403, 403, 403, 403, 403, 400),
    ("admin.import_template", "GET", ""):                   (L,   403, 403, 403, 403, 403, 200),
    ("tokens.tokens", "GET", ""):                           (L,   403, 403, 403, 403, 403, 200),
    ("tokens.tokens", "POST", ""):                          (L,   403, 403, 403, 403, 403, 400),
    ("tokens.revoke_token", "POST", ""):                    (L,   403, 403, 403, 403, 403, 302),
    ("webhooks.webhooks", "GET", ""):                       (L,   403, 403, 403, 403, 403, 200),
    ("webhooks.webhooks", "POST", ""):                      (L,   403, 403, 403, 403, 403, 400),
    ("webhooks.stop_webhook", "POST", ""):                  (L,   403, 403, 403, 403, 403, 302),
    ("xapi.index", "GET", ""):                              (L,   403, 403, 403, 403, 403, 200),
    ("xapi.retry", "POST", ""):                             (L,   403, 403, 403, 403, 403, 302),
    ("reminders.index", "GET", ""):                         (L,   403, 403, 403, 403, 403, 200),
    ("reminders.index", "POST", ""):                        (L,   403, 403, 403, 403, 403, 400),
    ("reminders.send_now", "POST", ""):                     (L,   403, 403, 403, 403, 403, 302),
    ("reminders_account.digest", "GET", ""):                (L,   403, 200, 403, 403, 200, 403),
    ("reminders_account.digest", "POST", ""):               (L,   403, 302, 403, 403, 302, 403),
    ("lti.platforms", "GET", ""):                           (L,   403, 403, 403, 403, 403, 200),
    ("lti.new_platform", "GET", ""):                        (L,   403, 403, 403, 403, 403, 200),
    ("lti.new_platform", "POST", ""):                       (L,   403, 403, 403, 403, 403, 400),
    ("lti.edit_platform", "GET", ""):                       (L,   403, 403, 403, 403, 403, 200),
    ("lti.edit_platform", "POST", ""):                      (L,   403, 403, 403, 403, 403, 400),
    ("lti.retry_grades", "POST", ""):                       (L,   403, 403, 403, 403, 403, 302),
    # LTI 1.3: what a learning platform's pages call; without a platform's parameters, refused
    ("lti.login", "GET", ""):                               (400, 400, 400, 400, 400, 400, 400),
    ("lti.login", "POST", ""):                              (400, 400, 400, 400, 400, 400, 400),
    ("lti.launch", "POST", ""):                             (400, 400, 400, 400, 400, 400, 400),
    ("lti.jwks", "GET", ""):                                (200, 200, 200, 200, 200, 200, 200),
    # connecting an LMS account to one's own: signed in directly, or from the emailed link
    ("lti.connect", "GET", ""):                             (L,   200, 200, 200, 200, 200, 200),
    ("lti.connect", "POST", ""):                            (L,   400, 400, 400, 400, 400, 400),
    ("lti.connect_link", "GET", ""):                        (400, 400, 400, 400, 400, 400, 400),
    ("lti.connect_link", "POST", ""):                       (400, 400, 400, 400, 400, 400, 400),
    ("lti.remove_identity", "POST", ""):                    (L,   403, 403, 403, 403, 403, 404),
    # the audit trail: governors and administrators read it
    ("audit.index", "GET", ""):                             (L,   403, 200, 403, 403, 403, 200),
    ("audit.check", "GET", ""):                             (L,   403, 200, 403, 403, 403, 200),
    # the API: bearer tokens only, never the browser's session
    ("api.openapi", "GET", ""):                             (200, 200, 200, 200, 200, 200, 200),
    ("api.person_status", "GET", ""):                       (401, 401, 401, 401, 401, 401, 401),
    ("api.check", "POST", ""):                              (401, 401, 401, 401, 401, 401, 401),
}  # fmt: skip

# A governor reads but never changes; these are the state-changing routes a governor may use
# anyway: their own learner actions and their own account (signing in and out, their password).
GOVERNOR_OWN_ACTIONS = {
    "auth.sign_in", "auth.sign_out", "auth.forgot_password", "auth.accept_invite",
    "auth.reset_password", "auth.change_password", "auth.sign_out_others", "training.mark_read",
    "training.sign",
    "quiz.intro", "quiz.attempt", "lti.login", "lti.launch", "lti.connect", "lti.connect_link",
    "mfa.verify", "mfa.verify_passkey", "mfa.recover", "mfa.enrol", "mfa.enrol_with_passkey",
    "mfa.add_totp", "mfa.add_passkey", "mfa.remove", "mfa.renew_codes",
    "reminders_account.digest",  # their own choice: the weekly digest by email, or not
}  # fmt: skip

# Tables a page view may write to: the status store and the outbox (an answer worked out when it
# was asked for, and the change it announces), the record that a module was opened, a
# certificate's PDF stored on its first download, the sign-in log, and the one-use challenge a
# passkey page hands out (kept on the server so an answer cannot be replayed).
DERIVED_BY_READING = {
    "stored_status", "outbox", "module_visit", "certificate", "sign_in_attempt",
    "passkey_challenge",
}  # fmt: skip

# The scope each API route needs (None: public, such as the API's own description).
API_SCOPES: dict[str, str | None] = {
    "api.openapi": None,
    "api.person_status": "training:read",
    "api.check": "training:read",
}


def routes(app: Flask) -> set[tuple[str, str, str]]:
    """Every (endpoint, method, rule) the app serves, except static files."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.add((rule.endpoint, method, rule.rule))
    return found


# --- the records: made once per backend ------------------------------------------------------------


@dataclass
class World:
    app: Flask
    people: dict[str, int]
    attempts: dict[str, str]  # person key -> a submitted quiz attempt's public id
    certificates: dict[str, str]  # person key -> a certificate's code
    application_id: int
    account_id: int
    spare_token_id: int
    webhook_id: int
    platform_id: int
    invite_token: str
    reset_token: str
    api_secret: str
    api_secret_unscoped: str
    clients: dict[str, FlaskClient] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, who: str) -> FlaskClient:
        """A client signed in as ``who`` (a role, or "anonymous"), kept for the module."""
        if who not in self.clients:
            client = self.app.test_client()
            if who != "anonymous":
                Auth(self.app, client).as_person(self.people[who])
            self.clients[who] = client
        return self.clients[who]

    def sign_in_again(self, who: str) -> None:
        self.clients.pop(who, None)
        self.tokens.pop(who, None)
        self.client(who)

    def token(self, who: str) -> str:
        """A valid CSRF token for ``who``'s session (it lasts as long as the session)."""
        if who not in self.tokens:
            page = "/sign-in" if who == "anonymous" else "/account/password"
            self.tokens[who] = csrf_token(self.client(who), page)
        return self.tokens[who]


@functools.cache
def _hash_of(password: str) -> str:
    """One hash for everyone with the same password, at the tests' cheap cost."""
    return generate_password_hash(password, CHEAP_HASH_METHOD)


def _person(name: str, roles: tuple[str, ...], password: str | None = PASSWORD,
            schools: tuple[str, ...] = ()) -> int:  # fmt: skip
    email = name.lower().replace(" ", ".") + "@ladysmith.example"
    person = Person(name=name, email=email, active=True)
    person.role_rows = [PersonRole(role=r) for r in roles]
    person.school_rows = [PersonSchool(school=s) for s in schools]
    if password:
        person.password_hash = _hash_of(password)
    db.session.add(person)
    db.session.commit()
    return person.id


def _build(app: Flask) -> World:
    with app.app_context():
        publish_all()
        people = {role: _person(f"Matrix {role.title()}", (role,)) for role in ROLES}
        people["other"] = _person("Olive Other", ("staff",), schools=(SCHOOL,))
        people["runner"] = _person("Rory Runner", ("staff",))
        people["subject"] = _person("Sid Subject", ("staff",))
        people["newcomer"] = _person("Nell Newcomer", ("volunteer",), password=None)
        people["signer"] = _person("Sian Signer", ("staff",))
        people["learner"] = _person("Lee Learner", ("staff",))
        people["changer"] = _person("Cat Changer", ("staff",))
    train_people(app, *(people[k] for k in (*ROLES, "other", "runner")))
    with app.app_context():
        s = db.session
        issue_due(s, None)
        policy = s.scalar(select(Policy))
        complete_modules(s, s.get(Person, people["signer"]), policy)
        s.commit()
        attempts = {
            key: s.scalar(
                select(QuizAttempt.public_id).where(QuizAttempt.person_id == pid).limit(1)
            )
            for key, pid in people.items()
        }
        certificates = {
            key: s.scalar(select(Certificate.code).where(Certificate.person_id == pid))
            for key, pid in people.items()
        }
        other = s.get(Person, people["other"])
        application = submit_application(s, other, ApplicationData(
            name="Infant news", platform="Facebook", aim="News for families.",
            audience="Parents.", promotion="Newsletter.", visibility="private",
            runner_ids=(people["other"], people["runner"]),
        ))  # fmt: skip
        decide(s, application, s.get(Person, people["slt"]), True, "")
        account = record_account(s, application, s.get(Person, people["admin"]), "Facebook",
                                 "@InfantNews")  # fmt: skip
        api = create_token(s, "Matrix reader", ["training:read"])
        spare = create_token(s, "Matrix spare", ["training:read"])
        unscoped = create_token(s, "Matrix unscoped", ["training:read"])
        unscoped.token.scopes = ["reports:read"]  # a scope the API routes do not accept
        webhook = Webhook(url="https://hooks.example/matrix", secret="s", active=False)
        s.add(webhook)
        platform = LtiPlatform(
            name="Matrix Moodle", issuer="https://moodle.example", client_id="matrix",
            auth_login_url="https://moodle.example/auth", key_set_url="https://moodle.example/jwks",
            auth_token_url="https://moodle.example/token", role_map={"Learner": "staff"},
            deployments=[LtiDeployment(deployment_id="1")],
        )  # fmt: skip
        s.add(platform)
        s.commit()
        secret = app.config["SECRET_KEY"]
        return World(
            app=app, people=people, attempts=attempts, certificates=certificates,
            application_id=application.id, account_id=account.id,
            spare_token_id=spare.token.id, webhook_id=webhook.id, platform_id=platform.id,
            invite_token=make_link_token(secret, INVITE, s.get(Person, people["newcomer"])),
            reset_token=make_link_token(secret, RESET, other),
            api_secret=api.secret, api_secret_unscoped=unscoped.secret,
        )  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    if request.param == "sqlite":
        path = tmp / "countersign.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_ready")
        _truncate_postgres(url)
    (tmp / "instance").mkdir()
    app = create_matrix_app(url, tmp / "instance")
    yield _build(app)
    with app.app_context():
        db.engine.dispose()


def create_matrix_app(url: str, instance: Path) -> Flask:
    from app import create_app

    app = create_app({
        "TESTING": True, "DATABASE_URL": url, "CONTENT_DIR": str(ROOT / "content"),
        "SECRET_KEY": "test-secret-key-not-for-production", "SERVER_NAME": "countersign.test",
        "BASE_URL": "http://countersign.test", "WTF_CSRF_ENABLED": True, "MFA_ROLES": "",
        # Each role's session lasts the whole module (minutes on a slow machine): an action that
        # needs a recent sign-in is tested for that in tests/test_people.py.
        "RECENT_SIGN_IN_MINUTES": 24 * 60,
    })  # fmt: skip
    app.instance_path = str(instance)
    return app


# --- URLs with real arguments ----------------------------------------------------------------------


def _owner(world: World, whose: str, who: str) -> str:
    """Whose record a URL names: the requester's own (anonymous visitors: someone else's)."""
    return who if whose == "own" and who != "anonymous" else "other"


URL_ARGS: dict[str, Callable[[World, str, str], dict[str, Any]]] = {
    "auth.accept_invite": lambda w, whose, who: {"token": w.invite_token},
    "auth.reset_password": lambda w, whose, who: {"token": w.reset_token},
    "training.module": lambda w, whose, who: {"slug": POLICY, "module_slug": MODULE},
    "training.mark_read": lambda w, whose, who: {"slug": POLICY, "module_slug": MODULE},
    "training.full_policy": lambda w, whose, who: {"slug": POLICY},
    "training.sign": lambda w, whose, who: {"slug": POLICY},
    "training.signed": lambda w, whose, who: {"slug": POLICY},
    "quiz.intro": lambda w, whose, who: {"slug": POLICY, "module_slug": MODULE},
    "quiz.attempt": lambda w, whose, who: {"public_id": w.attempts[_owner(w, whose, who)]},
    "quiz.result": lambda w, whose, who: {"public_id": w.attempts[_owner(w, whose, who)]},
    "quiz.bank": lambda w, whose, who: {"slug": POLICY, "module_slug": MODULE},
    "certificates.verify": lambda w, whose, who: {"code": w.certificates["other"]},
    "certificates.download": lambda w, whose, who: {"code": w.certificates[_owner(w, whose, who)]},
    "certificates.school_zip": lambda w, whose, who: {"school": SCHOOL},
    "reports.person": lambda w, whose, who: {"person_id": w.people["other"]},
    "reports.evidence_pack": lambda w, whose, who: {"school": SCHOOL},
    "approvals.application": lambda w, whose, who: {"application_id": w.application_id},
    "approvals.record": lambda w, whose, who: {"application_id": w.application_id},
    "approvals.account": lambda w, whose, who: {"account_id": w.account_id},
    "admin.person": lambda w, whose, who: {"person_id": w.people["subject"]},
    "admin.deactivate_person": lambda w, whose, who: {"person_id": w.people["subject"]},
    "admin.reactivate_person": lambda w, whose, who: {"person_id": w.people["subject"]},
    "admin.sign_out_everywhere": lambda w, whose, who: {"person_id": w.people["subject"]},
    "admin.invite_person": lambda w, whose, who: {"person_id": w.people["subject"]},
    "admin.erase": lambda w, whose, who: {"person_id": w.people["subject"]},
    "mfa.admin_reset": lambda w, whose, who: {"person_id": w.people["subject"]},
    "mfa.remove": lambda w, whose, who: {"factor_id": 2147483647},  # nobody's: refused plainly
    "mfa.static": lambda w, whose, who: {"filename": "passkeys.js"},
    "tokens.revoke_token": lambda w, whose, who: {"token_id": w.spare_token_id},
    "webhooks.stop_webhook": lambda w, whose, who: {"webhook_id": w.webhook_id},
    "lti.edit_platform": lambda w, whose, who: {"platform_id": w.platform_id},
    "lti.connect_link": lambda w, whose, who: {"token": "a-link-never-sent"},
    "lti.remove_identity": lambda w, whose, who: {
        "person_id": w.people["subject"],
        "identity_id": 2147483647,
    },
    "api.person_status": lambda w, whose, who: {"ref": str(w.people["other"])},
}


def url_of(world: World, endpoint: str, whose: str = "", who: str = "anonymous") -> str:
    rule = next(r for r in world.app.url_map.iter_rules() if r.endpoint == endpoint)
    if rule.arguments and endpoint not in URL_ARGS:
        pytest.fail(f"{rule.rule} ({endpoint}) needs real URL arguments in URL_ARGS")
    values = URL_ARGS[endpoint](world, whose, who) if rule.arguments else {}
    with world.app.test_request_context():
        return url_for(endpoint, **values)


def outcome(response: Any) -> Cell:
    """The cell a response stands for. The body is read and the response closed, as a server
    does: a streamed download otherwise keeps its request context open into the next request."""
    response.get_data()
    response.close()
    if response.status_code == 302 and response.location.startswith("/sign-in?"):
        return L
    return response.status_code


# --- the tests -------------------------------------------------------------------------------------


def test_every_route_has_a_row_in_the_matrix(world: World) -> None:
    served = routes(world.app)
    listed = {(endpoint, method) for endpoint, method, _ in MATRIX}
    missing = sorted(
        f"{method} {rule} ({endpoint})" for endpoint, method, rule in served
        if (endpoint, method) not in listed
    )  # fmt: skip
    assert not missing, (
        "Routes without a row in the access matrix (add one saying who may use them): "
        + "; ".join(missing)
    )
    stale = sorted(
        f"{method} {endpoint}" for endpoint, method in listed
        if (endpoint, method) not in {(e, m) for e, m, _ in served}
    )  # fmt: skip
    assert not stale, "Rows for routes the app no longer serves: " + "; ".join(stale)
    assert set(API_SCOPES) == {e for e, _, rule in served if rule.startswith("/api/")}, (
        "Every API route needs its scope in API_SCOPES"
    )


def test_each_role_gets_the_answer_the_matrix_gives(world: World) -> None:
    assert world.app.config["WTF_CSRF_ENABLED"]
    served = {(endpoint, method) for endpoint, method, _ in routes(world.app)}
    # Reading first, then changes, in the order of the table (deactivating before reactivating).
    rows = sorted(
        ((key, cells) for key, cells in MATRIX.items() if key[:2] in served),
        key=lambda row: row[0][1] in CHANGING,
    )
    for who in COLUMNS:
        world.token(who)  # signed in with a CSRF secret before anything is measured
    before = snapshot(world.app)
    reading = True
    wrong = []
    for (endpoint, method, whose), cells in rows:
        if reading and method in CHANGING:
            reading = False
            changed = sorted(
                name for name, rows_now in snapshot(world.app).items()
                if name not in DERIVED_BY_READING and rows_now != before[name]
            )  # fmt: skip
            assert not changed, f"Reading pages changed these tables: {changed}"
        for who, expected in zip(COLUMNS, cells, strict=True):
            client = world.client(who)
            url = url_of(world, endpoint, whose, who)
            if method in CHANGING:
                response = client.open(url, method=method, data={"csrf_token": world.token(who)})
            else:
                response = client.open(url, method=method)
            got = outcome(response)
            if got != expected:
                wrong.append(
                    f"{method} {url} ({endpoint}) as {who}: expected {expected}, got {got}"
                )
            if endpoint.startswith("api."):
                assert response.is_json, f"{url} answered {who} with something other than JSON"
            if endpoint == "auth.sign_out":  # the session, and its CSRF secret, are gone
                world.sign_in_again(who)
    assert not wrong, "\n".join(wrong)


def test_the_matrix_never_lets_a_governor_change_anything(world: World) -> None:
    """Read off the table: every state-changing route refuses a governor-only person (403; the
    API, which ignores the session, 401), except their own learner actions and own account."""
    allowed = {
        f"{method} {endpoint}" for (endpoint, method, _), cells in MATRIX.items()
        if method in CHANGING and endpoint not in GOVERNOR_OWN_ACTIONS
        and cells[COLUMNS.index("governor")] not in (401, 403)
    }  # fmt: skip
    assert not allowed, f"Governors may change things through: {sorted(allowed)}"


def snapshot(app: Flask) -> dict[str, list[tuple]]:
    """Every row of every table, except the audit trail (which may record a refused request)."""
    with app.app_context():
        s = db.session
        state = {
            table.name: sorted(tuple(map(repr, row)) for row in s.execute(select(table)))
            for table in Base.metadata.sorted_tables
            if not table.name.startswith("audit")
        }
        s.rollback()
        return state


def full_forms(world: World) -> dict[str, dict[str, Any]]:
    """Forms filled in as a person allowed to use them would, keyed by endpoint."""
    p = world.people
    return {
        "admin.new_person": {"name": "New Person", "email": "new.person@ladysmith.example",
                             "roles": ["admin"]},
        "admin.person": {"name": "Renamed", "email": "renamed@ladysmith.example",
                         "roles": ["admin"]},
        "admin.deactivate_person": {},
        "admin.reactivate_person": {},
        "admin.sign_out_everywhere": {},
        "admin.invite_person": {},
        "admin.invite_all": {},
        "tokens.tokens": {"name": "Sneaky", "scopes": ["training:read"]},
        "tokens.revoke_token": {},
        "webhooks.webhooks": {"url": "https://hooks.example/sneaky"},
        "webhooks.stop_webhook": {},
        "xapi.retry": {},
        "reminders.index": {"first_after_days": "1", "every_days": "1", "max_times": "9",
                            "quiet_from": "0", "quiet_until": "0"},
        "reminders.send_now": {},
        "reminders_account.digest": {"weekly_digest": "y"},
        "lti.new_platform": {"name": "Sneaky", "issuer": "https://lms.example", "client_id": "c",
                             "auth_login_url": "https://lms.example/a",
                             "auth_token_url": "https://lms.example/t",
                             "key_set_url": "https://lms.example/k", "deployment_ids": "1",
                             "role_map": "Learner = admin", "school": "", "active": "y"},
        "lti.edit_platform": {"name": "Sneaky", "issuer": "https://lms.example", "client_id": "c",
                              "auth_login_url": "https://lms.example/a",
                              "auth_token_url": "https://lms.example/t",
                              "key_set_url": "https://lms.example/k", "deployment_ids": "1",
                              "role_map": "Learner = admin", "school": "", "active": "y"},
        "lti.retry_grades": {},
        "approvals.apply": {"name": "Sneaky", "platform": "Facebook", "aim": "a", "audience": "b",
                            "promotion": "c", "visibility": "open",
                            "runners": [p["other"], p["runner"]]},
        "approvals.application": {"decision": "reject", "reason": "No."},
        "approvals.record": {"platform": "Facebook", "handle": "@Sneaky"},
        "approvals.account": {"action": "close", "close-reason": "Closing it."},
        "auth.change_password": {"current": PASSWORD, "password": "another long password",
                                 "confirm": "another long password"},
        "training.sign": {"confirm": "y", "full_name": "Matrix Governor"},
        "auth.sign_in": {"email": "matrix.governor@ladysmith.example", "password": PASSWORD},
    }  # fmt: skip


@pytest.mark.parametrize("who", ["governor", "volunteer", "parent", "staff"])
def test_refused_changes_change_nothing_even_with_a_complete_form(world: World, who: str) -> None:
    """Each state-changing route a role is refused (403 in the matrix), posted with a form filled
    in as an allowed person would: the answer is 403 and the database is exactly as it was."""
    forms = full_forms(world)
    column = COLUMNS.index(who)
    refused = [
        (endpoint, method, whose) for (endpoint, method, whose), cells in MATRIX.items()
        if method in CHANGING and cells[column] == 403
    ]  # fmt: skip
    assert refused
    client = world.client(who)
    token = world.token(who)
    before = snapshot(world.app)
    for endpoint, method, whose in refused:
        data = {**forms.get(endpoint, {}), "csrf_token": token}
        response = client.open(url_of(world, endpoint, whose, who), method=method, data=data)
        assert response.status_code == 403, f"{method} {endpoint} as {who}"
    assert snapshot(world.app) == before


def test_another_persons_records_are_not_found_not_forbidden(world: World) -> None:
    client = world.client("staff")
    other = world.attempts["other"]
    for url in (f"/quiz/{other}", f"/quiz/{other}/result",
                f"/certificates/{world.certificates['other']}.pdf",
                f"/accounts/applications/{world.application_id}"):  # fmt: skip
        response = client.get(url)
        assert response.status_code == 404, url
        assert "Olive Other" not in response.get_data(as_text=True)
    # The learner's own pages show only their own records, whatever is asked for.
    for url in (f"/history?person_id={world.people['other']}",
                f"/policies/{POLICY}/signed?person_id={world.people['other']}"):  # fmt: skip
        page = client.get(url).get_data(as_text=True)
        assert "Matrix Staff" in page or "signed" in page.lower()
        assert "Olive Other" not in page
        assert world.certificates["other"] not in page
    # Staff see only their own applications in the list.
    listing = client.get("/accounts/applications").get_data(as_text=True)
    assert "Infant news" not in listing
    assert "Infant news" in world.client("governor").get("/accounts/applications").get_data(
        as_text=True
    )
    # The personal-data download is the requester's own, whatever is asked for.
    mine = client.get(f"/account/data.json?person_id={world.people['other']}")
    assert mine.status_code == 200
    text = mine.get_data(as_text=True)
    assert "matrix.staff@ladysmith.example" in text
    assert "olive.other@ladysmith.example" not in text


def test_api_routes_need_a_token_with_their_scope(world: World) -> None:
    client = world.app.test_client()
    bodies = {"api.check": {"people": [world.people["other"]]}}
    for endpoint, method, rule in sorted(routes(world.app)):
        if not rule.startswith("/api/"):
            continue
        url = url_of(world, endpoint)

        def call(secret: str | None, url: str = url, method: str = method,
                 endpoint: str = endpoint) -> Any:  # fmt: skip
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            return client.open(url, method=method, headers=headers, json=bodies.get(endpoint))

        scope = API_SCOPES[endpoint]
        if scope is None:
            assert call(None).status_code == 200, url
            continue
        for secret, status in ((None, 401), ("cs_not-a-real-token", 401),
                               (world.api_secret_unscoped, 403), (world.api_secret, 200)):  # fmt: skip
            response = call(secret)
            assert response.status_code == status, f"{method} {url} with {secret}"
            assert response.is_json, url
            if status != 200:
                assert response.get_json()["error"]["code"] in ("unauthorized", "forbidden")


# Posted by a learning platform's own pages, so they carry no CSRF token of ours: the login's
# state and nonce and the platform's signature guard them instead (tests/test_lti.py).
CROSS_SITE = {"lti.login", "lti.launch"}


def test_state_changing_pages_refuse_a_request_without_the_csrf_token(world: World) -> None:
    """Every POST/PUT/PATCH/DELETE outside the API, posted with a complete form but no CSRF token
    by people allowed to use it (the first and the last allowed column of its row): 400, and
    nothing in the database changes; nobody is signed out."""
    assert world.app.config["WTF_CSRF_ENABLED"]
    changing = sorted(
        (endpoint, method, rule) for endpoint, method, rule in routes(world.app)
        if method in CHANGING and not rule.startswith("/api/") and endpoint not in CROSS_SITE
    )  # fmt: skip
    assert changing
    for who in COLUMNS:
        world.token(who)  # each session holds a CSRF secret, so only the missing token is wrong
    before = snapshot(world.app)
    failures = []
    for endpoint, method, rule in changing:
        # A route not yet in the matrix (which fails on its own) is tried as an administrator.
        whose, cells = next(
            ((key[2], cells) for key, cells in MATRIX.items() if key[:2] == (endpoint, method)),
            ("", (403,) * len(COLUMNS)),
        )
        allowed = [c for c, cell in zip(COLUMNS, cells, strict=True) if cell not in (L, 403, 404)]
        for who in dict.fromkeys([allowed[0], allowed[-1]] if allowed else ["admin"]):
            data = full_forms(world).get(endpoint, {})
            url = url_of(world, endpoint, whose, who)
            response = world.client(who).open(url, method=method, data=data)
            page = response.get_data(as_text=True)
            if response.status_code != 400 or "This form has expired" not in page:
                failures.append(f"{method} {rule} as {who}: {response.status_code}")
    assert not failures, "\n".join(failures)
    after = snapshot(world.app)
    assert after == before, "Refused without a CSRF token, yet these tables changed: " + ", ".join(
        name for name in before if after[name] != before[name]
    )
    for who in ROLES:
        assert world.client(who).get("/").status_code == 200, f"{who} was signed out"


# --- fields a form does not offer are ignored ------------------------------------------------------

SMUGGLED = {
    "role": "admin", "roles": "admin", "is_admin": "1", "admin": "1", "active": "0",
    "score": "100", "passed": "1", "correct": "99", "auth_version": "0",
    "password_hash": "x", "email": "smuggled@ladysmith.example", "id": "1",
}  # fmt: skip


def _roles_and_email(app: Flask, pid: int) -> tuple[list[str], str, bool, int]:
    with app.app_context():
        person = db.session.get(Person, pid)
        return sorted(person.roles), person.email, person.active, len(person.role_rows)


def test_change_password_ignores_fields_it_does_not_offer(world: World) -> None:
    pid = world.people["changer"]
    before = _roles_and_email(world.app, pid)
    auth = Auth(world.app, world.app.test_client())
    auth.as_person(pid)
    response = auth.post("/account/password", {
        **SMUGGLED, "person_id": world.people["other"], "current": PASSWORD,
        "password": "a new long password", "confirm": "a new long password",
    })  # fmt: skip
    assert response.status_code == 302
    assert _roles_and_email(world.app, pid) == before
    with world.app.app_context():
        assert check_password(db.session.get(Person, pid), "a new long password")
        assert check_password(db.session.get(Person, world.people["other"]), PASSWORD)


def test_signing_ignores_another_person_and_extra_fields(world: World) -> None:
    pid, other = world.people["signer"], world.people["other"]
    with world.app.app_context():
        others_acks = db.session.scalar(
            select(func.count()).where(Acknowledgement.person_id == other)
        )
    before = _roles_and_email(world.app, pid)
    auth = Auth(world.app, world.app.test_client())
    auth.as_person(pid)
    url = f"/policies/{POLICY}/sign"
    response = auth.post(url, {
        **SMUGGLED, "person_id": other, "policy_version_id": "999", "at": "2020-01-01",
        "ip": "10.9.9.9", "confirm": "y", "full_name": "Sian Signer",
    })  # fmt: skip
    assert response.status_code == 302
    assert response.location.endswith(f"/policies/{POLICY}/signed")
    assert _roles_and_email(world.app, pid) == before
    with world.app.app_context():
        (ack,) = db.session.scalars(select(Acknowledgement).where(Acknowledgement.person_id == pid))
        assert ack.ip != "10.9.9.9" and ack.at.year != 2020
        assert (
            db.session.scalar(select(func.count()).where(Acknowledgement.person_id == other))
            == others_acks
        )


def test_quiz_answers_ignore_a_posted_score_or_pass(world: World) -> None:
    pid, other = world.people["learner"], world.people["other"]
    before = _roles_and_email(world.app, pid)
    auth = Auth(world.app, world.app.test_client())
    client = auth.as_person(pid)
    read = f"/policies/{POLICY}/modules/{MODULE}"
    assert (
        auth.post(f"{read}/read", {"person_id": other, **SMUGGLED}, form_url=read).status_code
        == 302
    )
    intro = f"{read}/quiz"
    started = auth.post(intro, {"person_id": other, **SMUGGLED})
    assert started.status_code == 302
    public_id = started.location.rsplit("/", 1)[1]
    with world.app.app_context():
        attempt = db.session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id))
        assert attempt.person_id == pid
        answers = {f"q-{key}": ids for key, ids in wrong_answers(attempt).items()}
        others_reads = db.session.scalar(select(func.count()).where(ReadReceipt.person_id == other))
    response = client.post(started.location, data={
        **answers, **SMUGGLED, "person_id": other,
        "csrf_token": csrf_token(client, started.location),
    })  # fmt: skip
    assert response.status_code == 302
    assert _roles_and_email(world.app, pid) == before
    with world.app.app_context():
        attempt = db.session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == public_id))
        assert attempt.submission.passed is False
        assert attempt.submission.score == 0 and attempt.submission.correct == 0
        assert db.session.scalar(select(func.count()).where(ReadReceipt.person_id == pid)) == 1
        assert (
            db.session.scalar(select(func.count()).where(ReadReceipt.person_id == other))
            == others_reads
        )


def test_admin_person_form_ignores_fields_it_does_not_offer(world: World) -> None:
    pid = world.people["subject"]
    auth = Auth(world.app, world.app.test_client())
    auth.as_person(world.people["admin"])
    with world.app.app_context():
        person = db.session.get(Person, pid)
        password_hash, auth_version = person.password_hash, person.auth_version
    url = f"/admin/people/{pid}"
    response = auth.post(url, {
        "active": "0", "password_hash": "x", "auth_version": "99", "is_admin": "1",
        "name": "Sid Subject", "email": "sid.subject@ladysmith.example", "roles": ["staff"],
    })  # fmt: skip
    assert response.status_code == 302
    with world.app.app_context():
        person = db.session.get(Person, pid)
        assert person.password_hash == password_hash
        assert person.auth_version == auth_version
        assert sorted(person.roles) == ["staff"]


def test_an_application_is_always_the_applicants_own_and_pending(world: World) -> None:
    pid = world.people["staff"]
    auth = Auth(world.app, world.app.test_client())
    auth.as_person(pid)
    response = auth.post("/accounts/apply", {
        "applicant_id": world.people["other"], "state": "approved", "decided_by_id": pid,
        "name": "Staff news", "platform": "Facebook", "aim": "a", "audience": "b",
        "promotion": "c", "visibility": "open",
        "runners": [world.people["other"], world.people["runner"]],
    })  # fmt: skip
    assert response.status_code == 302
    with world.app.app_context():
        application = db.session.scalar(
            select(AccountApplication).where(AccountApplication.name == "Staff news")
        )
        assert application.applicant_id == pid
        assert application.state == "pending"
        assert application.decision is None
        assert db.session.scalar(select(func.count()).select_from(SocialAccount)) == 1


def test_accepting_an_invitation_sets_a_password_and_nothing_else(world: World) -> None:
    with world.app.app_context():
        pid = _person("Ivy Invited", ("parent",), password=None)
        link = "/invite/" + make_link_token(
            world.app.config["SECRET_KEY"], INVITE, db.session.get(Person, pid)
        )
    before = _roles_and_email(world.app, pid)
    auth = Auth(world.app, world.app.test_client())
    response = auth.post(link, {
        **SMUGGLED, "person_id": world.people["other"], "schools": SCHOOL,
        "password": "my own long password", "confirm": "my own long password",
    })  # fmt: skip
    assert response.status_code == 302
    assert _roles_and_email(world.app, pid) == before
    with world.app.app_context():
        person = db.session.get(Person, pid)
        assert check_password(person, "my own long password")
        assert person.schools == []
        assert check_password(db.session.get(Person, world.people["other"]), PASSWORD)


def test_token_and_webhook_forms_ignore_fields_they_do_not_offer(world: World) -> None:
    admin = world.people["admin"]
    auth = Auth(world.app, world.app.test_client())
    auth.as_person(admin)
    response = auth.post("/admin/tokens/", {
        "name": "Smuggler", "scopes": ["training:read"], "token_hash": "0" * 64,
        "revoked_at": "", "created_by_id": world.people["other"], "prefix": "cs_known",
    })  # fmt: skip
    assert response.status_code == 200
    refused = auth.post("/admin/tokens/", {"name": "Greedy", "scopes": ["admin:all"]})
    assert refused.status_code == 400
    hook = auth.post("/admin/webhooks/", {
        "url": "https://hooks.example/smuggled", "secret": "known-secret", "active": "0",
        "created_by_id": world.people["other"],
    })  # fmt: skip
    assert hook.status_code == 200
    with world.app.app_context():
        s = db.session
        token = s.scalar(select(ApiToken).where(ApiToken.name == "Smuggler"))
        assert token.token_hash != "0" * 64 and token.prefix != "cs_known"
        assert token.created_by_id == admin and token.revoked_at is None
        assert token.scopes == ["training:read"]
        assert s.scalar(select(ApiToken).where(ApiToken.name == "Greedy")) is None
        webhook = s.scalar(select(Webhook).where(Webhook.url == "https://hooks.example/smuggled"))
        assert webhook.secret != "known-secret"
        assert webhook.active is True and webhook.created_by_id == admin
        webhook.active = False  # no deliveries from the tests
        s.commit()
