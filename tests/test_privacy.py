"""Personal data: a person's own download, and erasing a leaver after the retention period."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import LargeBinary, func, inspect, select, text

from api.models import ApiToken
from api.tokens import create_token
from api.webhooks import create_webhook
from approvals.models import AccountApplication, SocialAccount
from approvals.rules import ApplicationData, close, decide, record_account, submit_application
from audit.models import AuditEvent
from certificates.issuing import issue_due, store_pdf
from certificates.models import Certificate
from core.db import db, utcnow
from core.outbox import OutboxMessage
from people.models import Person, SignInAttempt
from people.privacy import DEFAULT_RETENTION_DAYS
from people.service import deactivate
from quizzes.models import QuizAttempt
from reports import figures
from tests.conftest import PASSWORD, Auth, cached_world, run_worker, train_people
from training.models import Acknowledgement, ModuleVisit, Policy, ReadReceipt
from training.progress import record_visit
from training.publishing import current_version

pytestmark = pytest.mark.usefixtures("published")

ZEB_NAME, ZEB_EMAIL = "Zebedee Quuxworth", "zeb.quux@ladysmith.example"
OLWEN_NAME, OLWEN_EMAIL = "Olwen Otherwise", "olwen.otherwise@ladysmith.example"
# Every way the leaver could be found: full name, each part, the email and its local part.
ZEB_NEEDLES = ("zebedee", "quuxworth", "zeb.quux", ZEB_EMAIL)


@pytest.fixture
def world(request, app, make_person):
    return cached_world(request, app, make_person, lambda: _build_world(app, make_person))


def _build_world(app, make_person):
    """Two trained staff with everything the app keeps about a person, and their colleagues."""
    ids = {
        "zeb": make_person("staff", name=ZEB_NAME, email=ZEB_EMAIL, schools=("infant",)),
        "olwen": make_person("staff", name=OLWEN_NAME, email=OLWEN_EMAIL, schools=("infant",)),
        "ann": make_person("staff", name="Ann Applicant", schools=("junior",)),
        "sue": make_person("slt", "staff", name="Sue Senior"),
        "ada": make_person("admin", "staff", name="Ada Admin"),
    }
    # Sign-in attempts, good and bad, for both.
    for key in ("zeb", "olwen"):
        email = ZEB_EMAIL if key == "zeb" else OLWEN_EMAIL
        Auth(app, app.test_client()).sign_in(email, "not the password")
        Auth(app, app.test_client()).as_person(ids[key])
    with app.app_context():
        s = db.session
        create_webhook(s, "http://127.0.0.1:9/hook", created_by_id=ids["ada"])
        s.commit()
    train_people(app, ids["zeb"], ids["olwen"], ids["ann"])
    run_worker(app)  # "became trained" events, naming each person, queued for the webhook
    with app.app_context():
        s = db.session
        policy = s.scalar(select(Policy))
        version = current_version(s, policy)
        for key in ("zeb", "olwen"):
            record_visit(s, s.get(Person, ids[key]), version.module_versions[0])
        # Nothing more is queued.
        s.execute(text("UPDATE webhook SET active = false"))
        for certificate in issue_due(s, [ids["zeb"], ids["olwen"]]):
            store_pdf(s, certificate)
        zeb, olwen, ann = (s.get(Person, ids[k]) for k in ("zeb", "olwen", "ann"))
        create_token(s, "Zeb's approvals workflow", ["training:read"], created_by_id=ids["zeb"])
        create_token(s, "Olwen's other workflow", ["training:read"], created_by_id=ids["olwen"])
        named = submit_application(
            s,
            ann,
            ApplicationData(
                "Junior history", "Facebook", f"{ZEB_NAME} will post pupils' history work.",
                "Parents", f"Ask {ZEB_EMAIL} for the newsletter.", "private",
                (ids["zeb"], ids["olwen"]),
            ),
        )  # fmt: skip
        decide(s, named, s.get(Person, ids["sue"]), True, "")
        account = record_account(s, named, s.get(Person, ids["ada"]), "Facebook", "@ladyhistory")
        close(s, account, s.get(Person, ids["ada"]), f"{ZEB_NAME} has left the school.")
        submit_application(
            s,
            zeb,
            ApplicationData(
                "Infant sport", "X (Twitter)", "Results.", "Families.", "Newsletter.", "open",
                (ids["zeb"], ids["olwen"]),
            ),
        )  # fmt: skip
        assert olwen.name == OLWEN_NAME
        s.commit()
        figures.up_to_date()  # stored answers, which hold name and email, for everyone
    return ids


def leave(app, person_id: int, days_ago: int) -> None:
    with app.app_context():
        person = db.session.get(Person, person_id)
        deactivate(person, at=utcnow() - timedelta(days=days_ago))
        db.session.commit()


def text_columns(connection) -> list[tuple[str, str]]:
    """Every column of every table in the database, except binary ones (checked separately)."""
    inspector = inspect(connection)
    return [
        (table, column["name"])
        for table in inspector.get_table_names()
        for column in inspector.get_columns(table)
        if not isinstance(column["type"], LargeBinary)
    ]


def occurrences(app, needles=ZEB_NEEDLES) -> dict[str, int]:
    """``table.column`` → rows whose value, as text, contains any needle (case-insensitive)."""
    found: dict[str, int] = {}
    with app.app_context():
        with db.engine.connect() as connection:
            for table, column in text_columns(connection):
                quoted = f'"{table}"."{column}"'
                where = " OR ".join(
                    f"LOWER(CAST({quoted} AS TEXT)) LIKE :n{i}" for i in range(len(needles))
                )
                params = {f"n{i}": f"%{n.lower()}%" for i, n in enumerate(needles)}
                n = connection.execute(
                    text(f'SELECT COUNT(*) FROM "{table}" WHERE {where}'), params
                ).scalar()
                if n:
                    found[f"{table}.{column}"] = n
    return found


def dump(app) -> dict[str, list]:
    """The whole database, table by table, to show that nothing changed."""
    with app.app_context():
        with db.engine.connect() as connection:
            return {
                table: sorted(
                    repr(tuple(row)) for row in connection.execute(text(f'SELECT * FROM "{table}"'))
                )
                for table in inspect(connection).get_table_names()
            }


def admin(app, world) -> Auth:
    auth = Auth(app, app.test_client())
    auth.as_person(world["ada"])
    return auth


def counts(app):
    with app.app_context():
        figures.up_to_date()
        s = db.session
        policy = s.scalar(select(Policy))
        schools = {"infant": "Ladysmith Infant School", "junior": "Ladysmith Junior School"}
        return (
            [(c.key, dict(c.counts)) for c in figures.by_school(s, policy.id, schools)],
            [(c.key, dict(c.counts)) for c in figures.by_role(s, policy.id)],
            dict(figures.overall(s, policy.id).counts),
            figures.signed_per_month(s, policy.id),
        )


# --- the download --------------------------------------------------------------------------------


def test_a_person_downloads_their_own_records_and_nothing_of_anyone_elses(app, world):
    client = Auth(app, app.test_client()).as_person(world["zeb"])
    history = client.get("/history").get_data(as_text=True)
    assert 'href="/account/data.json"' in history
    response = client.get("/account/data.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "no-store" in response.headers["Cache-Control"]
    raw = response.get_data(as_text=True)
    data = json.loads(raw)

    with app.app_context():
        s = db.session
        zeb_id = world["zeb"]
        mine = {
            "reads": s.scalar(select(func.count()).where(ReadReceipt.person_id == zeb_id)),
            "visits": s.scalar(select(func.count()).where(ModuleVisit.person_id == zeb_id)),
            "attempts": set(s.scalars(select(QuizAttempt.public_id).where(
                QuizAttempt.person_id == zeb_id))),
            "certificates": set(s.scalars(select(Certificate.code).where(
                Certificate.person_id == zeb_id))),
            "signins": s.scalar(select(func.count()).where(SignInAttempt.email == ZEB_EMAIL)),
        }  # fmt: skip
        theirs = list(
            s.scalars(select(QuizAttempt.public_id).where(QuizAttempt.person_id != zeb_id))
        )
        theirs += list(s.scalars(select(Certificate.code).where(Certificate.person_id != zeb_id)))
        others = s.scalars(select(Person).where(Person.id != zeb_id)).all()
        other_emails = [p.email for p in others]
        other_names = [p.name for p in others]
        token_prefixes = list(s.scalars(select(ApiToken.prefix).where(
            ApiToken.created_by_id != zeb_id)))  # fmt: skip

    profile = data["profile"]
    assert (profile["id"], profile["name"], profile["email"]) == (zeb_id, ZEB_NAME, ZEB_EMAIL)
    assert (profile["roles"], profile["schools"]) == (["staff"], ["infant"])
    assert len(data["read_receipts"]) == mine["reads"] > 0
    assert len(data["module_visits"]) == mine["visits"] > 0
    attempts = data["quiz_attempts"]
    assert {a["attempt"] for a in attempts} == mine["attempts"] and attempts
    assert all(a["passed"] and a["questions"] for a in attempts)
    assert all(q["answer_given"] for a in attempts for q in a["questions"])
    [ack] = data["acknowledgements"]
    assert ack["typed_name"] == ZEB_NAME and ack["version"] and ack["signed_at"] and ack["modules"]
    [certificate] = data["certificates"]
    assert certificate["code"] in mine["certificates"]
    assert certificate["verify_url"] == f"http://countersign.test/verify/{certificate['code']}"
    # The fixture's bad attempt, its good one, and this test's own sign-in.
    assert len(data["sign_in_attempts"]) == mine["signins"] == 3
    assert [t["name"] for t in data["api_tokens_created"]] == ["Zeb's approvals workflow"]
    assert all("hash" not in json.dumps(t) for t in data["api_tokens_created"])
    named, applied = data["account_applications"]
    assert named["you_are_a_runner"] and not named["you_applied"]
    assert named["decision"]["approved"] and named["decision"]["your_status_at_decision"]["trained"]
    assert "runners" not in named and "aim" not in named  # someone else's business case
    assert applied["you_applied"] and applied["runners"] == [OLWEN_NAME, ZEB_NAME]
    [entry] = data["account_register"]
    assert entry["handle"] == "@ladyhistory" and entry["you_as_runner"]

    # Nothing of anyone else's: no email, no record, and no name except the runners Zeb chose
    # on his own application (shown to him when he applied).
    for email in other_emails:
        assert email not in raw
    for code in theirs + token_prefixes:
        assert code not in raw
    assert raw.count(OLWEN_NAME) == 1
    for name in other_names:
        if name != OLWEN_NAME:
            assert name not in raw
    assert "Olwen" not in json.dumps(named)

    with app.app_context():
        event = db.session.scalar(
            select(AuditEvent).where(AuditEvent.event == "personal_data.exported")
        )
        assert event.actor_id == zeb_id and event.subject_id == str(zeb_id)


def test_the_download_needs_a_signed_in_person(app, client):
    response = client.get("/account/data.json")
    assert response.status_code == 302 and "/sign-in" in response.location


# --- erasure -------------------------------------------------------------------------------------


def test_erasure_removes_every_occurrence_of_the_name_and_email_and_keeps_the_evidence(app, world):
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    before = occurrences(app)
    # The test means something only if the name and email were everywhere to begin with.
    for place in (
        "person.name", "person.email", "acknowledgement.typed_name", "certificate.person_name",
        "sign_in_attempt.email", "application_decision.runners_snapshot",
        "account_application.aim", "account_application.promotion", "social_account.close_reason",
        "outbox.payload",
    ):  # fmt: skip
        assert place in before, place
    with app.app_context():
        s = db.session
        zeb_id = world["zeb"]
        acks_before = s.execute(
            select(Acknowledgement.id, Acknowledgement.policy_version_id, Acknowledgement.at)
            .where(Acknowledgement.person_id == zeb_id)
        ).all()  # fmt: skip
        assert s.scalar(select(Certificate.pdf).where(Certificate.person_id == zeb_id))
        code = s.scalar(select(Certificate.code).where(Certificate.person_id == zeb_id))
        olwen_before = s.scalar(select(func.count()).where(SignInAttempt.email == OLWEN_EMAIL))
    reports_before = counts(app)

    auth = admin(app, world)
    page = auth.client.get(f"/admin/people/{zeb_id}")
    assert f'href="/admin/people/{zeb_id}/erase"' in page.get_data(as_text=True)
    response = auth.post(f"/admin/people/{zeb_id}/erase")
    assert response.status_code == 302

    assert occurrences(app) == {}
    with app.app_context():
        s = db.session
        zeb = s.get(Person, zeb_id)
        assert zeb.name == f"Erased person #{zeb_id}"
        assert zeb.email == f"erased-{zeb_id}@erased.invalid"
        assert zeb.erased_at is not None and zeb.password_hash is None and not zeb.active
        assert zeb.roles == ["staff"] and zeb.schools == ["infant"]
        # The acknowledgement stays: policy version, time and modules, under the pseudonym.
        assert s.execute(
            select(Acknowledgement.id, Acknowledgement.policy_version_id, Acknowledgement.at)
            .where(Acknowledgement.person_id == zeb_id)
        ).all() == acks_before  # fmt: skip
        assert s.scalar(select(Certificate.pdf).where(Certificate.person_id == zeb_id)) is None
        assert s.scalar(select(func.count()).where(SignInAttempt.email == OLWEN_EMAIL)) == (
            olwen_before
        )
        assert s.scalar(select(func.count()).where(ReadReceipt.person_id == zeb_id)) > 0
        assert s.scalar(select(func.count()).where(QuizAttempt.person_id == zeb_id)) > 0
        # Other people's data is untouched.
        olwen = s.scalar(select(Person).where(Person.email == OLWEN_EMAIL))
        assert olwen.name == OLWEN_NAME and olwen.password_hash
        event = s.scalar(select(AuditEvent).where(AuditEvent.event == "person.erased"))
        assert (event.actor_id, event.subject_id) == (world["ada"], str(zeb_id))
    assert counts(app) == reports_before

    # Erased: not re-erasable, shown as erased, cannot sign in, certificate withdrawn.
    again = auth.post(f"/admin/people/{zeb_id}/erase", form_url=f"/admin/people/{world['olwen']}")
    assert again.status_code == 409
    assert "already been erased" in again.get_data(as_text=True)
    listing = auth.client.get("/admin/people?state=inactive").get_data(as_text=True)
    assert f"Erased person #{zeb_id}" in listing and "<strong>Erased</strong>" in listing
    assert auth.client.get(f"/certificates/{code}.pdf").status_code == 404
    verify = app.test_client().get(f"/verify/{code}")
    assert verify.status_code == 200
    page = verify.get_data(as_text=True)
    assert "This certificate has been withdrawn" in page and "Erased person" not in page
    for email in (ZEB_EMAIL, f"erased-{zeb_id}@erased.invalid"):
        assert Auth(app, app.test_client()).sign_in(email).status_code == 400


def test_an_active_person_cannot_be_erased(app, world):
    auth = admin(app, world)
    url = f"/admin/people/{world['zeb']}/erase"
    page = auth.client.get(url)
    assert page.status_code == 409
    assert "Only a deactivated person" in page.get_data(as_text=True)
    before = dump(app)
    response = auth.post(url, form_url=f"/admin/people/{world['zeb']}")
    assert response.status_code == 409
    assert dump(app) == before


@pytest.mark.parametrize("app_config", [{"RETENTION_DAYS": 30}])
def test_a_leaver_within_the_retention_period_cannot_be_erased(app, world):
    leave(app, world["zeb"], days_ago=29)
    leave(app, world["olwen"], days_ago=31)
    auth = admin(app, world)
    page = auth.client.get(f"/admin/people/{world['zeb']}/erase")
    assert page.status_code == 409
    assert "kept for 30 days after they left" in page.get_data(as_text=True)
    before = dump(app)
    refused = auth.post(
        f"/admin/people/{world['zeb']}/erase", form_url=f"/admin/people/{world['zeb']}"
    )
    assert refused.status_code == 409
    assert dump(app) == before
    # The configured period, not the default, decides.
    assert auth.client.get(f"/admin/people/{world['olwen']}/erase").status_code == 200


def test_erasure_is_all_or_nothing(app, world, runner):
    """Someone already holds the pseudonymous address, so the last step of the erasure fails:
    every earlier change must be undone with it."""
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    with app.app_context():
        blocker = Person(name="Blocker", email=f"erased-{world['zeb']}@erased.invalid")
        db.session.add(blocker)
        db.session.commit()
    before = dump(app)
    result = runner.invoke(args=["people", "erase-expired"])
    assert result.exit_code != 0
    assert f"person #{world['zeb']}: not erased" in result.output
    assert dump(app) == before
    with app.app_context():
        assert db.session.scalar(select(Certificate.pdf).where(
            Certificate.person_id == world["zeb"]))  # fmt: skip


def test_the_cli_dry_run_changes_nothing_and_the_real_run_erases_only_expired_leavers(
    app, world, runner
):
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    leave(app, world["olwen"], days_ago=DEFAULT_RETENTION_DAYS - 1)
    before = dump(app)
    result = runner.invoke(args=["people", "erase-expired", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would erase person #{world['zeb']}" in result.output
    assert f"#{world['olwen']}" not in result.output
    assert "nothing changed" in result.output
    assert dump(app) == before

    result = runner.invoke(args=["people", "erase-expired"])
    assert result.exit_code == 0, result.output
    assert f"erased person #{world['zeb']}" in result.output
    assert occurrences(app) == {}
    assert occurrences(app, (OLWEN_NAME, OLWEN_EMAIL))  # too recent a leaver: kept
    with app.app_context():
        s = db.session
        assert s.get(Person, world["zeb"]).erased_at is not None
        assert s.get(Person, world["olwen"]).erased_at is None
        assert s.get(Person, world["ann"]).name == "Ann Applicant"
        event = s.scalar(select(AuditEvent).where(AuditEvent.event == "person.erased"))
        assert event.actor_id is None and event.subject_id == str(world["zeb"])
    again = runner.invoke(args=["people", "erase-expired"])
    assert again.exit_code == 0 and "0 leaver(s) erased" in again.output


def test_an_erased_record_cannot_be_reactivated_or_edited(app, world):
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    auth = admin(app, world)
    url = f"/admin/people/{world['zeb']}"
    assert auth.post(f"{url}/erase").status_code == 302
    assert "Reactivate" not in auth.client.get(url).get_data(as_text=True)
    auth.post(f"{url}/reactivate", form_url=url)
    edited = auth.post(url, {"name": ZEB_NAME, "email": ZEB_EMAIL, "roles": ["staff"]})
    assert edited.status_code == 400
    with app.app_context():
        zeb = db.session.get(Person, world["zeb"])
        assert not zeb.active and zeb.name.startswith("Erased person")
    assert occurrences(app) == {}


def test_webhook_deliveries_keep_the_event_but_not_the_name(app, world):
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    assert admin(app, world).post(f"/admin/people/{world['zeb']}/erase").status_code == 302
    with app.app_context():
        about_zeb = [
            d.payload["event"]["data"]["person"]
            for d in db.session.scalars(
                select(OutboxMessage).where(OutboxMessage.topic == "webhook")
            )
            if d.payload["event"]["data"]["person"]["id"] == world["zeb"]
        ]
        assert about_zeb and all(p["name"].startswith("Erased person") for p in about_zeb)
        assert db.session.scalar(select(func.count()).select_from(AccountApplication)) == 2
        assert db.session.scalar(select(SocialAccount.handle)) == "@ladyhistory"


def test_an_erased_person_cannot_sign_in_with_their_old_password(app, world):
    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    assert admin(app, world).post(f"/admin/people/{world['zeb']}/erase").status_code == 302
    response = Auth(app, app.test_client()).sign_in(ZEB_EMAIL, PASSWORD)
    assert response.status_code == 400


def test_second_factor_methods_are_in_the_download_without_secrets_and_go_with_erasure(app, world):
    """A person sees which second factors they have set up (never the secret or a code's hash);
    erasing a leaver removes their methods and recovery codes."""
    import pyotp

    from mfa.models import PasskeyChallenge, RecoveryCode, SecondFactor
    from mfa.rules import enrol_totp, new_recovery_codes, new_totp_secret

    client = Auth(app, app.test_client()).as_person(world["zeb"])
    with app.app_context():
        s = db.session
        zeb = s.get(Person, world["zeb"])
        secret = new_totp_secret()
        enrol_totp(s, zeb, secret, pyotp.TOTP(secret).now())
        codes = new_recovery_codes(s, zeb)
        s.commit()
    body = client.get("/account/data.json").get_data(as_text=True)
    data = json.loads(body)
    assert data["second_factor"]["recovery_codes_left"] == len(codes) == 10
    assert [m["method"] for m in data["second_factor"]["methods"]] == ["Authenticator app"]
    assert secret not in body and not any(code in body for code in codes)

    leave(app, world["zeb"], days_ago=DEFAULT_RETENTION_DAYS + 1)
    assert admin(app, world).post(f"/admin/people/{world['zeb']}/erase").status_code == 302
    with app.app_context():
        for model in (SecondFactor, RecoveryCode, PasskeyChallenge):
            left = db.session.scalar(
                select(func.count()).select_from(model).where(model.person_id == world["zeb"])
            )
            assert left == 0, model.__tablename__
