"""A staff member's whole journey in real headless Chromium against the app served on 127.0.0.1."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import right_answers, wrong_answers

CHROMIUM = os.environ.get("COUNTERSIGN_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("COUNTERSIGN_TEST_ARTIFACTS", "test-artifacts"))

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("published")]

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # `make test` installs it; say so rather than fail obscurely
    pytest.skip(
        f"Chromium not found at {CHROMIUM} (make test installs it)", allow_module_level=True
    )


@pytest.fixture
def app_config() -> dict:
    return {"SERVER_NAME": None}


@pytest.fixture
def base_url(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def phone(browser) -> Iterator[object]:
    """A small touch screen, as a teaching assistant at home would use."""
    context = browser.new_context(
        viewport={"width": 375, "height": 740},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    page = context.new_page()
    page.set_default_timeout(15000)
    problems: list[str] = []
    # Script errors and Content-Security-Policy refusals; HTTP statuses are checked by the tests.
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.console_problems = problems
    yield page
    context.close()


def answer_quiz(page, app, choose) -> None:
    """Answer the quiz on the page: the right (or wrong) options, looked up in the server's record
    of this attempt, since the page itself never says which options are right."""
    from sqlalchemy import select

    from core.db import db
    from quizzes.models import QuizAttempt

    page.get_by_role("button", name="Submit answers").wait_for()
    with app.app_context():
        attempt = db.session.scalar(
            select(QuizAttempt).where(QuizAttempt.public_id == page.url.rsplit("/", 1)[1])
        )
        answers = choose(attempt)
    for key, option_ids in answers.items():
        for option_id in option_ids:
            page.locator(f'input[name="q-{key}"][value="{option_id}"]').check()
    page.get_by_role("button", name="Submit answers").click()


def check_accessibility(page, name: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    serious = [
        v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")
    ]
    assert not serious, f"{name}: " + results.generate_report()


def test_staff_member_reads_every_module_passes_quizzes_signs_and_is_trained(
    phone, base_url, make_person, app
):
    make_person("staff", name="Sam Teaching-Assistant", email="sam@ladysmith.example")
    page = phone
    page.goto(base_url + "/")
    assert page.url.startswith(base_url + "/sign-in")
    check_accessibility(page, "sign-in")
    page.get_by_label("Email address").fill("sam@ladysmith.example")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_text("The email address or password is not right.").first.is_visible()
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("heading", name="Your training").wait_for()
    assert "You have completed 0 of 13 modules" in page.content()
    check_accessibility(page, "dashboard")
    page.get_by_role("link", name="Start").click()

    for number in range(1, 14):
        page.get_by_text(f"Module {number} of 13").wait_for()
        if number == 1:
            check_accessibility(page, "module")
        page.get_by_role("button", name="I have read this module").click()
        page.get_by_role("button", name="Start the quiz").click()
        if number == 1:  # get the first quiz wrong, then re-read and try again
            check_accessibility(page, "quiz")
            answer_quiz(page, app, wrong_answers)
            page.get_by_role("heading", name="Not passed this time").wait_for()
            check_accessibility(page, "quiz result")
            page.get_by_role("link", name="Try again").click()
            page.get_by_role("button", name="Try again").click()
        answer_quiz(page, app, right_answers)
        page.get_by_role("heading", name="You passed").wait_for()
        next_step = "Check and sign the policy" if number == 13 else "Next:"
        page.get_by_role("link", name=next_step).click()

    page.get_by_role("heading", name="Check and sign").wait_for()
    check_accessibility(page, "sign")
    page.get_by_role("button", name="Sign", exact=True).click()
    assert page.get_by_text("Tick the box to confirm the declaration.").first.is_visible()
    page.get_by_label("I agree with the declaration above").check()
    page.get_by_label("Your full name").fill("Sam Teaching-Assistant")
    page.get_by_role("button", name="Sign", exact=True).click()

    page.get_by_role("heading", name="You are trained on the Social Media Policy").wait_for()
    check_accessibility(page, "confirmation")
    page.get_by_role("link", name="Back to your training").click()
    assert page.get_by_text("You are trained on this policy").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-trained-phone.png"), full_page=True)

    page.get_by_role("link", name="Your record").click()
    assert page.get_by_role("button", name="Print this record").is_visible()
    assert page.console_problems == []


def test_keyboard_user_can_skip_to_content(phone, base_url):
    page = phone
    page.goto(base_url + "/sign-in")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused.strip() == "Skip to main content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
