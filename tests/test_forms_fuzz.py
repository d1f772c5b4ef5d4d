"""Whatever is typed into a form, the answer is a page with a message, never a server error."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import csrf_token
from tests.test_journey import VOLUNTEER_MODULES, complete_modules

NASTY = st.sampled_from(
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "JaVaScRiPt:alert(1)",
        "&#106;avascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        '<svg onload="alert(1)">',
        "\x00",
        "\u202e\u202dname",
        "a" * 20000,
        "-1",
        "1e309",
        "",
        " ",
        "Ω≈ç√∫˜µ≤≥÷",
    ]
)
TEXT = st.one_of(NASTY, st.text(max_size=300))
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Executable(HTMLParser):
    """Collects markup a browser would execute: event handlers, inline scripts, script URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not dict(attrs).get("src", "").startswith("/static/"):
            self.found.append("inline <script>")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}>")
            if name in ("href", "src", "action") and value:
                scheme = "".join(value.split()).lower()
                if scheme.startswith(("javascript:", "data:", "vbscript:")):
                    self.found.append(f"<{tag} {name}={value[:30]}>")


def assert_safe(response) -> None:
    assert response.status_code < 500
    parser = _Executable()
    parser.feed(response.get_data(as_text=True))
    assert parser.found == []


@pytest.mark.usefixtures("published")
@FUZZ
@given(email=TEXT, password=TEXT)
def test_sign_in_form_never_errors(client, email, password):
    token = csrf_token(client, "/sign-in")
    assert_safe(client.post("/sign-in", data={"email": email, "password": password,
                                              "csrf_token": token}))  # fmt: skip


@FUZZ
@given(email=TEXT)
def test_forgot_password_form_never_errors(client, email):
    token = csrf_token(client, "/forgot-password")
    assert_safe(client.post("/forgot-password", data={"email": email, "csrf_token": token}))


@FUZZ
@given(name=TEXT, email=TEXT, roles=st.lists(TEXT, max_size=3), schools=st.lists(TEXT, max_size=3))
def test_person_form_never_errors(auth, make_person, name, email, roles, schools):
    if not getattr(auth, "_signed_in", False):
        auth.as_person(make_person("admin"))
        auth._signed_in = True
    response = auth.post(
        "/admin/people/new", {"name": name, "email": email, "roles": roles, "schools": schools}
    )
    assert_safe(response)


@pytest.mark.usefixtures("published")
@FUZZ
@given(full_name=TEXT.filter(lambda t: t.strip().lower() != "val vol"), confirm=TEXT)
def test_acknowledgement_form_never_errors(auth, make_person, full_name, confirm):
    url = "/policies/social-media-policy/sign"
    if not getattr(auth, "_signed_in", False):
        auth.as_person(make_person("volunteer", name="Val Vol"))
        complete_modules(auth.app, auth.client, VOLUNTEER_MODULES)
        auth._signed_in = True
    response = auth.post(url, {"full_name": full_name, "confirm": confirm})
    assert_safe(response)
    assert response.status_code == 400  # never the right name, so always the form again


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["q", "role", "school", "state", "page"]), TEXT))
def test_people_list_filters_never_error(auth, make_person, query):
    if not getattr(auth, "_signed_in", False):
        auth.as_person(make_person("admin"))
        auth._signed_in = True
    assert_safe(auth.client.get("/admin/people", query_string=query))
