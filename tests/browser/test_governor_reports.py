"""A governor before a meeting, in real headless Chromium: the report, a person, their certificate."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.browser.conftest import ARTIFACTS, check_accessibility, watch_console
from tests.conftest import train_people

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("published")]


@pytest.fixture
def laptop(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15000)
    page.console_problems = watch_console(page)
    yield page
    context.close()


def test_governor_reads_the_report_opens_a_person_and_downloads_their_certificate(
    laptop, base_url, make_person, app, tmp_path
):
    from certificates.issuing import issue_and_render
    from core.db import db

    make_person("governor", name="Gwen Governor", email="gwen@ladysmith.example")
    trained = make_person("staff", name="Tom Trained", schools=("infant",))
    make_person("staff", name="Una Untrained", schools=("infant",))
    train_people(app, trained)
    with app.app_context():
        assert len(issue_and_render(db.session, [trained])) == 1

    page = laptop
    page.goto(base_url + "/sign-in")
    page.get_by_label("Email address").fill("gwen@ladysmith.example")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Reports").click()

    page.get_by_role("heading", name="Training reports").wait_for()
    assert page.get_by_role("img", name="Trained, by school").is_visible()
    assert "1 of 3" in page.content()  # Tom of Tom, Una and Gwen herself
    check_accessibility(page, "report")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-laptop.png"), full_page=True)

    page.get_by_role("link", name="Everyone, module by module").click()
    page.get_by_role("heading", name="Who is trained").wait_for()
    check_accessibility(page, "who is trained")
    page.get_by_role("link", name="Tom Trained").click()

    page.get_by_role("heading", name="Tom Trained").wait_for()
    check_accessibility(page, "person")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="download the certificate (PDF)").click()
    pdf = tmp_path / "certificate.pdf"
    download_info.value.save_as(pdf)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
    assert "Tom Trained" in text.stdout
    # The first page renders to an image, as a printer or a viewer would draw it.
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
        check=True,
    )
    [image] = tmp_path.glob("page*.png")
    assert image.read_bytes().startswith(b"\x89PNG") and image.stat().st_size > 10_000
    assert page.console_problems == []
