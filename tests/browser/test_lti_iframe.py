"""Countersign inside a learning platform's iframe, in real headless Chromium.

The test platform (``tests/lti_platform.py``, its own keys, a real HTTP server) serves a course
page from ``http://localhost:<port>``; the tool is served from ``http://127.0.0.1:<port>``, so
the frame is cross-site, as a school's Moodle on its own domain framing Countersign is. The whole
launch happens inside the frame, as a platform does it: the frame opens a platform page that
posts the login initiation to the tool, the tool redirects the frame to the platform's ``/auth``,
which posts the signed id_token back (form_post), and the tool signs the person in and shows
their training. The person then reads a module and passes its quiz inside the frame, so each
request carries the embedded session's cookie (``SameSite=None; Secure``) and its CSRF token.

What Chromium does here (156, Debian's build), found by running it:

- A ``Secure`` cookie set over plain http is kept for ``http://127.0.0.1``: Chromium treats
  loopback origins as potentially trustworthy (DevTools reports the cookie's source scheme as
  "Secure"), so no certificate is needed.
- Third-party cookies: this build registers ``profile.cookie_controls_mode = 1`` ("block
  third-party cookies") as its *default* (``chrome://prefs-internals`` shows value 1 with
  metadata "default"; no policy or flag sets it), in new contexts and persistent profiles
  alike. Google Chrome's default is 2 ("block third-party cookies in Incognito" only), so a
  staff member's normal Chrome window sends the tool's cookie inside the LMS frame. With the
  build's default the launch succeeds but its ``SameSite=None`` cookie is refused (DevTools:
  blocked reason ``UserPreferences``), so the next page in the frame would be the sign-in page,
  which may not be framed. A ``Partitioned`` (CHIPS) cookie is kept in both modes, so the
  embedded session's cookie is partitioned, and the launch test runs with each setting.
- A page with ``frame-ancestors 'none'`` (and ``X-Frame-Options: DENY``) is not rendered in a
  frame: Chromium logs the refusal to the page's console and shows its own error page
  (``chrome-error://chromewebdata/``) in the frame.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from werkzeug.wrappers import Request, Response

from core.db import db
from core.web import federation
from lti.accounts import DEFAULT_ROLE_MAP
from lti.registry import PlatformData, register_platform
from people.models import Person
from tests.browser.conftest import ARGS, CHROMIUM, watch_console
from tests.conftest import right_answers
from tests.lti_platform import AGS, LTI, TestPlatform, give_tool_key

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("published")]

TIMEOUT_MS = 15000


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"SERVER_NAME": None}


def _page(title: str, body: str) -> Response:
    return Response(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body>{body}</body></html>",
        content_type="text/html; charset=utf-8",
    )


def _auto_post(title: str, action: str, fields: dict[str, str]) -> Response:
    """A page that posts a form at once, as platforms do between their frames and the tool."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return _page(
        title,
        f'<form method="post" action="{html.escape(action)}">{inputs}'
        '<noscript><button type="submit">Continue</button></noscript></form>'
        "<script>document.forms[0].submit()</script>",
    )


@dataclass
class CoursePlatform(TestPlatform):
    """The test platform plus the pages a browser sees: a course page framing the tool, the
    frame's login initiation and the OIDC authorisation endpoint answering with form_post."""

    __test__ = False

    tool_url: str = ""
    auth_requests: list[dict[str, str]] = field(default_factory=list)

    def start(self) -> CoursePlatform:
        super().start()
        # The same server, named so that the browser sees another site than the tool's 127.0.0.1.
        self.url = self.url.replace("127.0.0.1", "localhost")
        return self

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/course":
            return self._course(f"{self.url}/course/launch")
        if path == "/course/launch":
            return _auto_post(
                "Opening the activity",
                f"{self.tool_url}/lti/login",
                {
                    "iss": self.issuer,
                    "login_hint": "17",
                    "client_id": self.client_id,
                    "lti_deployment_id": self.deployment_id,
                    "target_link_uri": f"{self.tool_url}/",
                    "lti_message_hint": "resource-9",
                },
            )
        if path == "/auth":
            return self._auth(request)
        if path == "/framed":  # any page of the tool, framed without a launch
            return self._course(self.tool_url + request.args.get("path", "/"))
        return super()._route(request)

    def _course(self, src: str) -> Response:
        return _page(
            "Staff induction",
            "<h1>Staff induction</h1>"
            f'<iframe src="{html.escape(src)}" title="Social media policy training" '
            'width="1000" height="700"></iframe>',
        )

    def _auth(self, request: Request) -> Response:
        """The OIDC authorisation request: checked as a platform would, then the signed
        id_token goes back to the tool's redirect_uri in a self-posting form."""
        params = {k: request.values.get(k, "") for k in request.values}
        self.auth_requests.append(params)
        expected = {
            "scope": "openid", "response_type": "id_token", "response_mode": "form_post",
            "prompt": "none", "client_id": self.client_id, "login_hint": "17",
            "lti_message_hint": "resource-9",
        }  # fmt: skip
        wrong = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
        redirect_uri = params.get("redirect_uri", "")
        if (
            wrong
            or redirect_uri != f"{self.tool_url}/lti/launch"
            or not params.get("nonce")
            or not params.get("state")
        ):
            return Response(f"bad authorisation request: {wrong} {redirect_uri}", status=400)
        claims = self.claims(
            params["nonce"], **{AGS: None, LTI + "target_link_uri": f"{self.tool_url}/"}
        )
        return _auto_post(
            "Launching",
            redirect_uri,
            {"id_token": self.sign(claims), "state": params.get("state", "")},
        )


@pytest.fixture
def platform(app, base_url) -> Iterator[CoursePlatform]:
    give_tool_key(Path(app.instance_path))
    app.config["BASE_URL"] = base_url  # the launch URL given to the platform is built on it
    course = CoursePlatform(tool_url=base_url).start()
    reg = course.registration()
    data = PlatformData(
        reg["name"], reg["issuer"], reg["client_id"], reg["auth_login_url"],
        reg["auth_token_url"], reg["key_set_url"], "", (reg["deployment_ids"],),
        dict(DEFAULT_ROLE_MAP), "",
    )  # fmt: skip
    with app.test_request_context():
        register_platform(db.session, data, federation())
        db.session.commit()
    yield course
    course.stop()


# Chromium's cookie_controls_mode: 2 is Google Chrome's default for a normal window (third-party
# cookies blocked in Incognito only); 1 blocks third-party cookies everywhere, as Incognito, this
# Chromium build and stricter browsers do.
COOKIE_MODES = {"third-party cookies allowed": 2, "third-party cookies blocked": 1}


@pytest.fixture(params=sorted(COOKIE_MODES))
def page(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A tab of a Chromium profile with the given cookie setting (see the module's docstring),
    in its own browser instance with the browser tests' usual switches."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (make test installs it)")
    profile = tmp_path / "chromium-profile"
    (profile / "Default").mkdir(parents=True)
    preferences = {"profile": {"cookie_controls_mode": COOKIE_MODES[request.param]}}
    (profile / "Default" / "Preferences").write_text(json.dumps(preferences))
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1100, "height": 850},
        )  # fmt: skip
        try:
            tab = context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            tab.set_default_navigation_timeout(TIMEOUT_MS)
            tab.console_problems = watch_console(tab)
            yield tab
        finally:
            context.close()


def _tool_frame(page: Any, base_url: str) -> Any:
    return next(f for f in page.frames if f.url.startswith(base_url))


def _refused_framing(page: Any, url: str, base_url: str) -> str:
    """Open ``url``, a page framing one of the tool's; returns Chromium's console refusal."""
    with page.expect_console_message(lambda m: "frame-ancestors" in m.text) as message:
        page.goto(url)
    page.wait_for_load_state("load")
    (framed,) = page.main_frame.child_frames
    assert not framed.url.startswith(base_url), framed.url  # Chromium's error page instead
    assert "Sign in" not in framed.content() and "Your training" not in framed.content()
    return message.value.text


def _answer_quiz(page: Any, frame: Any, app: Any, base_url: str) -> None:
    """The right options, looked up in the server's record of this attempt (the page never
    says which options are right)."""
    from quizzes.models import QuizAttempt

    frame.get_by_role("button", name="Submit answers").wait_for()
    attempt_id = _tool_frame(page, base_url).url.rsplit("/", 1)[1]
    with app.app_context():
        attempt = db.session.scalar(select(QuizAttempt).where(QuizAttempt.public_id == attempt_id))
        answers = right_answers(attempt)
    for key, option_ids in answers.items():
        for option_id in option_ids:
            frame.locator(f'input[name="q-{key}"][value="{option_id}"]').check()
    frame.get_by_role("button", name="Submit answers").click()


def test_a_launch_inside_the_platforms_cross_site_frame_signs_in_and_the_session_works_there(
    page, platform, base_url, app
):
    assert urlsplit(platform.url).hostname == "localhost"
    assert urlsplit(base_url).hostname == "127.0.0.1"
    page.goto(platform.url + "/course")
    frame = page.frame_locator("iframe")
    frame.get_by_role("heading", name="Your training").wait_for()
    tool = _tool_frame(page, base_url)
    assert tool.url == base_url + "/" and tool.parent_frame == page.main_frame
    assert page.url == platform.url + "/course"  # the top page stays the platform's
    assert len(platform.auth_requests) == 1
    assert frame.get_by_text("Tessa Assistant").first.is_visible()
    assert "You have completed 0 of 13 modules" in tool.content()

    # The cookie the browser kept is the embedded session's: cross-site, Secure, HttpOnly.
    (cookie,) = [c for c in page.context.cookies(base_url) if c["name"] == "countersign_session"]
    assert (cookie["sameSite"], cookie["secure"], cookie["httpOnly"]) == ("None", True, True)

    # Read the first module and pass its quiz, all inside the frame: every POST needs the
    # session and its CSRF token.
    frame.get_by_role("link", name="Start").click()
    frame.get_by_text("Module 1 of 13").wait_for()
    frame.get_by_role("button", name="I have read this module").click()
    frame.get_by_role("button", name="Start the quiz").click()
    _answer_quiz(page, frame, app, base_url)
    frame.get_by_role("heading", name="You passed").wait_for()
    frame.get_by_role("navigation", name="Main").get_by_role("link", name="Your training").click()
    frame.get_by_text("You have completed 1 of 13 modules").wait_for()
    assert frame.get_by_role("link", name="Continue where you left off").is_visible()
    assert page.url == platform.url + "/course"
    with app.app_context():
        person = db.session.scalar(
            select(Person).where(Person.email == "tessa.ta@ladysmith.example")
        )
        assert person is not None and person.name == "Tessa Assistant"
    assert page.console_problems == []  # no script error, no frame-ancestors refusal

    # Another site framing the tool gets nothing of the embedded session: its cookie is
    # partitioned to the platform's pages, so elsewhere the tool sees nobody signed in and its
    # pages refuse every frame.
    other_origin = platform.url.replace("localhost", "127.0.0.1")
    refusal = _refused_framing(page, f"{other_origin}/framed?path=/", base_url)
    assert "frame-ancestors 'none'" in refusal, refusal


def test_pages_outside_an_lms_launch_are_never_shown_in_another_sites_frame(
    page, platform, base_url, make_person
):
    refusal = _refused_framing(page, f"{platform.url}/framed?path=/sign-in", base_url)
    assert "frame-ancestors 'none'" in refusal, refusal

    # Someone signed in the ordinary way, in the same browser: still never framed.
    make_person("staff", name="Sam Teaching-Assistant", email="sam@ladysmith.example")
    page.goto(base_url + "/sign-in")
    page.get_by_label("Email address").fill("sam@ladysmith.example")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Your training").wait_for()
    (cookie,) = [c for c in page.context.cookies(base_url) if c["name"] == "countersign_session"]
    assert cookie["sameSite"] == "Lax"
    refusal = _refused_framing(page, f"{platform.url}/framed?path=/", base_url)
    assert "frame-ancestors 'none'" in refusal, refusal
