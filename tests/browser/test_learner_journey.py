"""A staff member's whole journey in real headless Chromium against the app served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.conftest import ARTIFACTS, check_accessibility, watch_console
from tests.conftest import right_answers, wrong_answers

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("published")]


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
    page.console_problems = watch_console(page)
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
    page.get_by_role("button", name="Print this record").wait_for()
    assert page.console_problems == []


def test_keyboard_user_can_skip_to_content(phone, base_url):
    page = phone
    page.goto(base_url + "/sign-in")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused.strip() == "Skip to main content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
