"""Reminders by email, read back from a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, date, datetime, time, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from core import outbox
from core.db import db, utcnow
from core.outbox import OutboxMessage
from people.models import Person
from reminders.models import Reminder, ReminderSettings
from reminders.rules import EMAIL, next_allowed
from tests.conftest import run_worker, train_people
from training.models import StoredStatus

LONDON = ZoneInfo("Europe/London")


class Mailbox:
    """aiosmtpd's handler: keeps each message; ``refuse`` answers DATA with that reply instead."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse: str | None = None
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        if self.refuse:
            return self.refuse
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=_free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


@pytest.fixture
def app_config(mailbox):
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": mailbox.port,
        "SMTP_STARTTLS": False,
        "SMTP_FROM": "training@ladysmith.example",
        "TIMEZONE": "Europe/London",
    }


def local(day_offset: int, hour: int) -> datetime:
    """A moment ``day_offset`` days from today at ``hour`` o'clock in the school's time zone."""
    day = utcnow().astimezone(LONDON).date() + timedelta(days=day_offset)
    return datetime.combine(day, time(hour), LONDON).astimezone(UTC)


def parts(message: EmailMessage) -> tuple[str, str]:
    return (
        message.get_body(("plain",)).get_content(),
        message.get_body(("html",)).get_content(),
    )


def reminder_rows(app) -> list[tuple[str, str]]:
    with app.app_context():
        return [
            (r.kind, r.cycle) for r in db.session.scalars(select(Reminder).order_by(Reminder.id))
        ]


def due_today(app, pid: int) -> None:
    """Make a person 8 days old, so their first reminder is due now, and turn the quiet hours
    off, so it is sent whatever the time of day the test runs at (a failed send is retried after
    a back-off counted from the real clock, so these tests run at the real time)."""
    with app.app_context():
        person = db.session.get(Person, pid)
        person.created_at = utcnow() - timedelta(days=8)
        db.session.add(ReminderSettings(id=1, quiet_from=0, quiet_until=0))
        db.session.commit()


def test_learner_not_started_is_reminded_in_plain_text_and_html_with_one_link(
    app, published, make_person, mailbox
):
    make_person("staff", name="Sam Staff", email="sam@ladysmith.example")
    run_worker(app, now=local(6, 10))  # six days after it became due: nothing yet
    assert mailbox.messages == []
    run_worker(app, now=local(8, 10))
    (message,) = mailbox.to("sam@ladysmith.example")
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == "Ladysmith Federation <training@ladysmith.example>"
    assert "Social Media Policy" in message["Subject"]
    text, html = parts(message)
    assert "Dear Sam Staff" in text and "http://countersign.test/" in text
    assert 'href="http://countersign.test/"' in html
    assert html.count("<a ") == 1  # one clear link


def test_a_reminder_due_at_night_waits_for_the_morning(app, published, make_person, mailbox):
    make_person("staff", email="night@ladysmith.example")
    run_worker(app, now=local(8, 22))  # due, but 22:00 in the school's time zone
    assert mailbox.messages == []
    with app.app_context():
        due = db.session.scalar(select(OutboxMessage.due_at).where(OutboxMessage.topic == EMAIL))
    assert due == local(9, 8)
    run_worker(app, now=local(9, 3))  # still night
    assert mailbox.messages == []
    run_worker(app, now=local(9, 9))
    assert len(mailbox.to("night@ladysmith.example")) == 1


def test_quiet_hours_move_to_the_morning_in_the_schools_time_zone(app):
    settings = ReminderSettings()
    with app.app_context():
        assert next_allowed(settings, local(1, 12)) == local(1, 12)
        assert next_allowed(settings, local(1, 20)) == local(2, 8)
        assert next_allowed(settings, local(1, 7)) == local(1, 8)
        settings.quiet_from = settings.quiet_until = 0  # no quiet hours
        assert next_allowed(settings, local(1, 23)) == local(1, 23)


def test_each_reminder_is_sent_once_per_kind_and_cycle_even_when_the_job_runs_twice(
    app, published, make_person, mailbox
):
    make_person("staff", email="once@ladysmith.example")
    run_worker(app, now=local(8, 10))
    run_worker(app, now=local(8, 11))  # the job again, next hour: the same first reminder
    run_worker(app, now=local(10, 11))
    assert len(mailbox.to("once@ladysmith.example")) == 1
    run_worker(app, now=local(15, 10))  # M = 7 days later: the second
    assert len(mailbox.to("once@ladysmith.example")) == 2
    for day in (22, 29, 36, 43, 50):  # K = 4 at most
        run_worker(app, now=local(day, 10))
    assert len(mailbox.to("once@ladysmith.example")) == 4
    assert [k for k, _ in reminder_rows(app)] == ["not_started"] * 4


def test_two_workers_at_once_send_one_email(app, published, make_person, mailbox):
    make_person("staff", email="two@ladysmith.example")
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    now = local(8, 10)

    def work(n: int) -> None:
        try:
            with app.app_context():
                start.wait()
                outbox.run_once(f"worker-{n}", now=now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    run_worker(app, now=now)
    assert len(mailbox.to("two@ladysmith.example")) == 1


def test_inactive_people_and_the_trained_get_no_reminder(app, published, make_person, mailbox):
    make_person("staff", email="gone@ladysmith.example", active=False)
    done = make_person("staff", email="done@ladysmith.example")
    train_people(app, done)
    run_worker(app, now=local(8, 10))
    assert mailbox.messages == []


def test_a_learner_who_finishes_overnight_is_not_reminded_in_the_morning(
    app, published, make_person, mailbox
):
    pid = make_person("staff", email="late@ladysmith.example")
    run_worker(app, now=local(8, 22))
    train_people(app, pid)
    run_worker(app, now=local(9, 9))
    assert mailbox.messages == []


def test_expiring_and_expired_training_is_announced(app, published, make_person, mailbox):
    pid = make_person("staff", email="exp@ladysmith.example")
    train_people(app, pid)
    run_worker(app, now=local(0, 10))
    with app.app_context():
        valid_until = db.session.scalar(
            select(StoredStatus.valid_until).where(StoredStatus.person_id == pid)
        )
    days = (valid_until.astimezone(LONDON).date() - utcnow().astimezone(LONDON).date()).days
    run_worker(app, now=local(days - 29, 10))
    run_worker(app, now=local(days - 20, 10))  # still within 30 days: not again
    run_worker(app, now=local(days - 6, 10))
    run_worker(app, now=local(days + 2, 10))
    subjects = [m["Subject"] for m in mailbox.to("exp@ladysmith.example")]
    assert subjects == [
        "Your Social Media Policy training expires in 30 days",
        "Your Social Media Policy training expires in 7 days",
        "Your Social Media Policy training has expired",
    ]


def test_a_refused_send_is_retried_and_shown_on_the_admin_page(
    app, published, make_person, mailbox, auth
):
    due_today(app, make_person("staff", name="Refused Person", email="refused@ladysmith.example"))
    mailbox.refuse = "451 Try again later"
    run_worker(app)
    assert mailbox.messages == []
    with app.app_context():
        message = db.session.scalar(select(OutboxMessage).where(OutboxMessage.topic == EMAIL))
        assert message.state == "retrying" and message.attempts == 1
        assert message.last_error == "email not sent (refused)"
    auth.as_person(make_person("admin"))
    page = auth.client.get("/admin/reminders/").get_data(as_text=True)
    assert "Refused Person" in page and "Retrying (email not sent (refused))" in page
    mailbox.refuse = None
    run_worker(app, now=utcnow() + timedelta(minutes=2))
    assert len(mailbox.to("refused@ladysmith.example")) == 1
    page = auth.client.get("/admin/reminders/").get_data(as_text=True)
    assert "Sent" in page


def test_a_stopped_mail_server_is_retried(app, published, make_person, mailbox):
    due_today(app, make_person("staff", email="stopped@ladysmith.example"))
    app.config["SMTP_PORT"] = _free_port()  # nothing listens there
    run_worker(app)
    with app.app_context():
        message = db.session.scalar(select(OutboxMessage).where(OutboxMessage.topic == EMAIL))
        assert message.state == "retrying" and message.last_error == "email not sent (connect)"
    app.config["SMTP_PORT"] = mailbox.port
    run_worker(app, now=utcnow() + timedelta(minutes=2))
    assert len(mailbox.to("stopped@ladysmith.example")) == 1


def test_settings_are_saved_and_bad_input_is_shown_at_the_field(app, auth, make_person):
    auth.as_person(make_person("admin"))
    page = auth.client.get("/admin/reminders/").get_data(as_text=True)
    assert 'value="7"' in page and 'value="20"' in page  # the defaults
    form = {"first_after_days": "3", "every_days": "5", "max_times": "2", "quiet_from": "21",
            "quiet_until": "7", "not_started_on": "y"}  # fmt: skip
    response = auth.post("/admin/reminders/", {**form, "every_days": "0"})
    assert response.status_code == 400
    assert "Enter a number of days from 1 to 365." in response.get_data(as_text=True)
    response = auth.post("/admin/reminders/", form)
    assert response.status_code == 302
    with app.app_context():
        settings = db.session.get(ReminderSettings, 1)
        assert (settings.first_after_days, settings.every_days, settings.max_times) == (3, 5, 2)
        assert settings.not_started_on and not settings.expired_on


def test_turning_a_kind_off_stops_it(app, published, make_person, mailbox):
    make_person("staff", email="off@ladysmith.example")
    with app.app_context():
        db.session.add(ReminderSettings(id=1, not_started_on=False))
        db.session.commit()
    run_worker(app, now=local(8, 10))
    assert mailbox.messages == []


def test_send_now_runs_the_job_through_the_outbox(app, auth, published, make_person, mailbox):
    due_today(app, make_person("staff", email="now@ladysmith.example"))
    auth.as_person(make_person("admin"))
    response = auth.post("/admin/reminders/send-now", form_url="/admin/reminders/")
    assert response.status_code == 302
    with app.app_context():
        queued = db.session.scalar(
            select(func.count()).select_from(OutboxMessage)
            .where(OutboxMessage.topic == "reminders.run")
        )  # fmt: skip
    assert queued == 1
    run_worker(app)
    assert [kind for kind, _ in reminder_rows(app)] == ["not_started"]
    assert len(mailbox.to("now@ladysmith.example")) == 1


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), LONDON).astimezone(UTC)


def next_monday() -> date:
    today = utcnow().astimezone(LONDON).date()
    return today + timedelta(days=7 - today.weekday())


def test_a_runner_whose_training_lapses_is_told_which_account_is_at_risk(
    app, published, make_person, mailbox
):
    from approvals.rules import ApplicationData, decide, record_account, submit_application

    runner = make_person("staff", name="Rita Runner", email="rita@ladysmith.example")
    other = make_person("staff", email="other@ladysmith.example")
    slt = make_person("slt", email="slt@ladysmith.example")
    admin = make_person("admin", email="admin@ladysmith.example")
    train_people(app, runner, other)
    with app.app_context():
        s = db.session
        application = submit_application(s, s.get(Person, other), ApplicationData(
            name="Infant news", platform="Facebook", aim="News.", audience="Parents.",
            promotion="Newsletter.", visibility="private", runner_ids=(runner, other),
        ))  # fmt: skip
        decide(s, application, s.get(Person, slt), True, "")
        record_account(s, application, s.get(Person, admin), "Facebook", "@InfantNews")
        s.commit()
    run_worker(app, now=local(0, 10))
    with app.app_context():
        until = db.session.scalar(
            select(StoredStatus.valid_until).where(StoredStatus.person_id == runner)
        )
    run_worker(app, now=at(until.astimezone(LONDON).date() + timedelta(days=2), 10))
    at_risk = [m for m in mailbox.to("rita@ladysmith.example") if "at risk" in m["Subject"]]
    assert len(at_risk) == 1
    text, html = parts(at_risk[0])
    assert "Infant news (Facebook: @InfantNews)" in text and "Infant news" in html


def test_slt_and_governors_get_a_weekly_digest_they_can_switch_off(
    app, published, make_person, mailbox, auth
):
    make_person("slt", name="Sally Lead", email="sally@ladysmith.example")
    governor = make_person("governor", email="gus@ladysmith.example")
    make_person("staff", name="Una Untrained", email="una@ladysmith.example", schools=("infant",))
    auth.as_person(governor)
    page = auth.client.get("/account/password").get_data(as_text=True)
    assert "/account/digest" in page  # from their own page
    assert "checked" in auth.client.get("/account/digest").get_data(as_text=True)  # on by default
    assert auth.post("/account/digest", {}).status_code == 302  # unticked: off
    monday = next_monday()
    run_worker(app, now=at(monday - timedelta(days=1), 10))  # Sunday: no digest
    run_worker(app, now=at(monday, 9))
    run_worker(app, now=at(monday, 10))  # again the same week: not again
    digests = [m for m in mailbox.messages if m["Subject"].startswith("Weekly training digest")]
    assert [m["To"] for m in digests] == ["sally@ladysmith.example"]
    text, html = parts(digests[0])
    assert "Infant" in text and "Una Untrained" in text and "Una Untrained" in html
    assert "Applications waiting for a decision (0)" in text
    assert 'href="http://countersign.test/reports/"' in html


def test_the_policy_owner_is_told_30_days_before_the_review_date(
    app, published, make_person, mailbox
):
    make_person("slt", email="lead@ladysmith.example")  # the owner: "Senior Leadership Team"
    make_person("admin", email="admin@ladysmith.example")
    with app.app_context():
        from training.models import PolicyVersion

        review = db.session.scalar(select(PolicyVersion.next_review))
    run_worker(app, now=at(review - timedelta(days=31), 10))
    run_worker(app, now=at(review - timedelta(days=29), 10))
    run_worker(app, now=at(review - timedelta(days=20), 10))
    reviews = [m for m in mailbox.messages if "due for review" in m["Subject"]]
    assert [m["To"] for m in reviews] == ["lead@ladysmith.example"]
    assert "Senior Leadership Team" in parts(reviews[0])[0]


def test_an_owner_is_a_named_person_a_role_or_else_slt_and_admins(app, make_person):
    from reminders.digest import owners

    slt = make_person("slt", email="s@ladysmith.example")
    admin = make_person("admin", email="a@ladysmith.example")
    gov = make_person("governor", name="Gail Governor", email="g@ladysmith.example")
    with app.app_context():
        assert owners(db.session, "Gail Governor") == [gov]
        assert owners(db.session, "Governing Board") == [gov]
        assert owners(db.session, "SLT") == [slt]
        assert owners(db.session, "The head's office") == [slt, admin]


def test_the_download_includes_the_reminders_a_person_was_sent(
    app, published, make_person, mailbox, auth
):
    pid = make_person("staff", email="mine@ladysmith.example")
    run_worker(app, now=local(8, 10))
    data = auth.as_person(pid).get("/account/data.json").get_json()
    assert [r["kind"] for r in data["reminders"]["sent"]] == ["not_started"]
    assert data["reminders"]["weekly_digest"] is None


def test_erasure_deletes_the_persons_reminders_and_digest_choice(
    app, published, make_person, mailbox
):
    from people.personal_data import Erasure
    from reminders.digest import set_digest
    from reminders.models import DigestChoice
    from reminders.privacy import erase_reminders

    pid = make_person("slt", email="leaver@ladysmith.example")
    run_worker(app, now=local(8, 10))
    with app.app_context():
        set_digest(db.session, db.session.get(Person, pid), False)
        db.session.commit()
        assert (
            db.session.scalar(select(func.count()).select_from(Reminder)) >= 1
        )  # (a digest too, on a Monday)
        erase_reminders(Erasure(db.session, pid, "n", "e", "N", "E"))
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Reminder)) == 0
        assert db.session.get(DigestChoice, pid) is None
