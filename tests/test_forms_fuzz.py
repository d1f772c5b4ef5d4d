"""Whatever is sent to a form or typed into a filter, the answer is a page with a message: never a
server error, and never markup a browser would run.

Every HTML form of the app (every non-API address that accepts POST) has a fuzz case here, and
``test_every_form_has_a_fuzz_case`` fails when a new one is added without one; likewise every page
that reads its query string. Each case signs in as a role allowed to use the form and sends a valid
CSRF token, so the generated fields reach the form's own handling rather than the CSRF refusal.

The generated requests mix ordinary text with the inputs attackers use: script tags, event
handlers, ``javascript:`` links in any case or entity-encoded, ``data:`` URLs, SVG ``onload``,
``<iframe srcdoc>``, ``<meta http-equiv=refresh>``, NUL bytes, right-to-left overrides, bodies that
are not UTF-8 (latin-1 bytes, lone surrogates as the raw bytes ``ED A0 80`` and percent-encoded),
negative, huge and decimal ids in addresses and fields, a field repeated where one value is expected,
and 10 MB bodies, which must get the 413 page (the limit is 2 MB). Bodies are sent percent-encoded,
as raw bytes, or as multipart; a raw urlencoded body that is not UTF-8 cannot be parsed at all, so
it must get the plain "form has expired" refusal (nothing saved), as a raw query string that is not
UTF-8 must get a 400. The query strings of the list and report pages are fuzzed the same way.

On SQLite each form gets ``EXAMPLES`` (500) generated requests. On PostgreSQL a smaller pass of
``PG_EXAMPLES`` (60) uses the nasty inputs only — NUL bytes and invalid text are what PostgreSQL
refuses where SQLite stores anything — so that the suite stays quick on two cores. The API has its
own generated requests in ``tests/test_api.py`` (Schemathesis, every operation of the OpenAPI
document). ``FUZZ_EXAMPLES`` sets a smaller count for a quick local run.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from io import BytesIO
from typing import Any
from urllib.parse import quote_from_bytes, unquote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse, encode_multipart

from core.db import db, utcnow
from mfa.models import PASSKEY, TOTP, SecondFactor
from mfa.rules import new_recovery_codes
from people.auth import INVITE, RESET, make_link_token
from people.models import Person, SignInAttempt
from tests.conftest import PASSWORD, csrf_token, examples, right_answers, train_people

EXAMPLES = examples(int(os.environ.get("FUZZ_EXAMPLES", "500")))  # fewer under `make check`
PG_EXAMPLES = examples(60)
POLICY = "social-media-policy"
MODULE = "scope"
HUGE = b"a" * (10 * 1024 * 1024)  # over MAX_CONTENT_LENGTH (2 MB): the answer is the 413 page

NASTY_TEXT = [
    "<script>alert(1)</script>",
    "<ScRiPt src=//evil.example/x.js></sCrIpT>",
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    '<img src=x onerror="alert(1)">',
    "JaVaScRiPt:alert(1)",
    " \tjava\nscript:alert(1)",
    "&#106;avascript:alert(1)",
    "&#x6A;&#x61;vascript&#58;alert(1)",
    "javascript&colon;alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    '<svg onload="alert(1)">',
    "<svg><a xlink:href='javascript:alert(1)'><text>x</text></a></svg>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "{{ 7*7 }}{% raw %}",
    "\x00",
    "a\x00b@school.example",
    "\u202e\u202dname",
    "\u202egnp.exe",
    "\ufeff",
    "\U0001f600",
    "a" * 5000,
    "-1",
    "0",
    "1.5",
    "1e309",
    "-99999999999999999999",
    "99999999999999999999",
    "2147483648",
    "9223372036854775808",
    "NaN",
    "",
    " ",
    "Ω≈ç√∫˜µ≤≥÷",
    "=cmd|' /C calc'!A0",
    "person1@ladysmith.example",
    "staff",
    "admin",
    "approve",
    "reject",
    "open",
    "transfer",
    "close",
    "Facebook",
]
NASTY_BYTES = [
    b"\xed\xa0\x80",  # a lone high surrogate, as UTF-8-style bytes
    b"\xed\xb2\x80x",  # a lone low surrogate
    b"caf\xe9 cr\xe8me",  # latin-1
    b"\xff\xfe\x00a",
    b"\xc0\xaf",  # an overlong "/"
    b"\x80\x81\x82",
    b"%ED%A0%80",  # stays percent-encoded in raw bodies: decoded by the form parser
    b"%00",
    b"%zz%",
    b"\x00<script>",
]
NASTY = st.one_of(st.sampled_from(NASTY_TEXT), st.sampled_from(NASTY_BYTES))
ANY_VALUE = st.one_of(NASTY, st.text(max_size=60), st.integers().map(str))


class _Executable(HTMLParser):
    """Collects markup a browser would execute: event handlers, inline scripts, script URLs,
    embedded documents and refreshes."""

    URL_ATTRS = frozenset({"href", "src", "action", "formaction", "xlink:href", "data", "poster",
                           "background", "codebase", "cite", "ping", "srcset"})  # fmt: skip
    SCHEMES = ("javascript:", "vbscript:", "data:", "livescript:")
    EMBEDS = frozenset({"iframe", "frame", "frameset", "object", "embed", "applet", "base"})

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and not values.get("src", "").startswith("/static/"):
            self.found.append("<script> not from /static/")
        if tag in self.EMBEDS:
            self.found.append(f"<{tag}>")
        if tag == "meta" and values.get("http-equiv", "").strip().lower() == "refresh":
            self.found.append("<meta http-equiv=refresh>")
        for name, value in values.items():
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}>")
            elif name == "srcdoc":
                self.found.append(f"<{tag} srcdoc>")
            elif name in self.URL_ATTRS or (tag in ("animate", "set") and name in
                                             ("to", "from", "values")):  # fmt: skip
                # The parser has already decoded entities; browsers ignore controls and spaces.
                url = re.sub(r"[\x00-\x20\x7f]+", "", value).lower()
                if url.startswith(self.SCHEMES):
                    self.found.append(f"<{tag} {name}={value[:40]!r}>")
            elif name == "style" and re.search(r"expression\(|javascript:|url\(", value, re.I):
                self.found.append(f"<{tag} style={value[:40]!r}>")


def executable_markup(html: str) -> list[str]:
    return list(_executable_markup(html))


@functools.lru_cache(maxsize=512)
def _executable_markup(html: str) -> tuple[str, ...]:
    # Most generated requests get a page already checked (the same refusal, the same form shown
    # again): about three in five, measured on three forms. The same page, the same answer.
    parser = _Executable()
    parser.feed(html)
    parser.close()
    return tuple(parser.found)


def assert_safe(response: TestResponse) -> None:
    """No server error, and nothing in the page a browser would run."""
    assert response.status_code < 500, response.get_data(as_text=True)[:2000]
    if response.mimetype == "text/html":
        found = executable_markup(response.get_data(as_text=True))
        assert found == [], found


def test_the_checker_catches_executable_markup() -> None:
    caught = [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        '<svg onload="alert(1)"></svg>',
        '<a href="JaVaScRiPt:alert(1)">x</a>',
        '<a href=" java\tscript:alert(1)">x</a>',
        '<a href="&#106;avascript&#x3A;alert(1)">x</a>',
        '<a href="&#x0A;javascript:alert(1)">x</a>',
        '<img src="data:text/html,x">',
        '<form action="javascript:alert(1)"></form>',
        '<button formaction="javascript:alert(1)">x</button>',
        '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
        '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>',
        '<meta http-equiv="Refresh" content="0;url=https://evil.example">',
        '<div style="background:url(javascript:alert(1))">x</div>',
        '<svg><animate attributeName="href" values="javascript:alert(1)"/></svg>',
    ]
    for html in caught:
        assert executable_markup(html), html
    harmless = [
        '<script src="/static/app.js"></script>',
        "<p>&lt;script&gt;alert(1)&lt;/script&gt; and javascript:alert(1) as text</p>",
        '<a href="/people?q=javascript:alert(1)">x</a>',
        '<a href="https://example.org/javascript:">x</a>',
        '<input value="&quot;&gt;&lt;svg onload=alert(1)&gt;">',
    ]
    for html in harmless:
        assert executable_markup(html) == [], html


# --- generating requests -------------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass
class Body:
    """The fields of one generated request, and how they travel."""

    pairs: list[tuple[str, str | bytes]]
    mode: str  # "percent", "raw" or "multipart"
    huge: bool = False

    def parses(self) -> bool:
        """Whether the form parser can read it: raw urlencoded bytes must be UTF-8."""
        if self.mode != "raw":
            return True
        try:
            self.encode("")[0].decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def encode(self, token: str | None) -> tuple[bytes, str]:
        pairs = ([("csrf_token", token)] if token is not None else []) + self.pairs
        if self.mode == "multipart":
            boundary = b"fuzzboundary7MA4YWxkTrZu0gW"
            out = []
            for name, value in pairs:
                safe_name = re.sub(rb'["\r\n\\]', b"_", _bytes(name))
                out += [b"--" + boundary, b'Content-Disposition: form-data; name="' + safe_name
                        + b'"', b"", _bytes(value)]  # fmt: skip
            if self.huge:
                out += [b"--" + boundary, b'Content-Disposition: form-data; name="huge"', b"", HUGE]
            body = b"\r\n".join([*out, b"--" + boundary + b"--", b""])
            return body, "multipart/form-data; boundary=" + boundary.decode()
        parts = []
        for i, (name, value) in enumerate(pairs):
            raw = self.mode == "raw" and i > 0
            encode = (lambda b: b.replace(b"&", b"%26")) if raw else (lambda b: quote_from_bytes(
                b, safe=b"").encode())  # fmt: skip
            parts.append(encode(_bytes(name)) + b"=" + encode(_bytes(value)))
        if self.huge:
            parts.append(b"huge=" + HUGE)
        return b"&".join(parts), "application/x-www-form-urlencoded"


def bodies(fields: dict[str, st.SearchStrategy], nasty_only: bool) -> st.SearchStrategy[Body]:
    """Fields of the form (each maybe repeated), with values of their own kind or nasty ones,
    plus fields the form does not have."""
    value = NASTY if nasty_only else ANY_VALUE
    names = sorted(fields)
    own = st.sampled_from(names).flatmap(
        lambda n: st.tuples(st.just(n), st.one_of(fields[n], value) if not nasty_only else value)
    ) if names else st.nothing()  # fmt: skip
    other = st.tuples(st.one_of(st.sampled_from(["", "x", "csrf_token", "q-", "a" * 100]),
                                st.text(max_size=12)), value)  # fmt: skip
    # Usually every field once (so the handler runs past "required"), then extras and repeats.
    complete = st.fixed_dictionaries(
        {n: (st.one_of(fields[n], value) if not nasty_only else value) for n in names}
    ).map(lambda d: list(d.items()))
    pairs = st.tuples(complete, st.lists(st.one_of(own, other), max_size=4)).map(
        lambda t: t[0] + t[1]
    )
    pairs = st.one_of(pairs, st.lists(st.one_of(own, other), max_size=6))
    return st.builds(
        Body,
        pairs=pairs,
        mode=st.sampled_from(["percent", "percent", "raw", "multipart"]),
        huge=st.integers(0, 59).map(lambda n: n == 0),
    )


def weird_ids(*valid: int) -> st.SearchStrategy[str]:
    """Ids as they appear in an address: valid ones, and ones that are not."""
    return st.one_of(
        st.sampled_from([str(v) for v in valid]) if valid else st.nothing(),
        st.sampled_from(["0", "-1", "1.5", "1e3", "2147483647", "2147483648",
                         "99999999999999999999", "%00", "%ED%A0%80", "x", "1%2F2", "+1"]),
        st.integers().map(str),
    )  # fmt: skip


# --- one signed-in client per test ---------------------------------------------------------------

CHEAP_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")


def person(app: Flask, make_person: Callable[..., int], *roles: str, **kw: Any) -> int:
    """A person whose password checks quickly: thousands of requests must not each pay scrypt."""
    kw.setdefault("password", None)
    pid = make_person(*roles, **kw)
    with app.app_context():
        db.session.get(Person, pid).password_hash = CHEAP_HASH
        db.session.commit()
    return pid


def sign_in(app: Flask, client: FlaskClient, pid: int) -> None:
    with app.app_context():
        email = db.session.get(Person, pid).email
    token = csrf_token(client, "/sign-in")
    response = client.post("/sign-in", data={"email": email, "password": PASSWORD,
                                              "csrf_token": token})  # fmt: skip
    assert response.status_code == 302, response.get_data(as_text=True)


@dataclass
class Fuzz:
    """Posts generated bodies to a form the way a browser that holds the form would."""

    app: Flask
    client: FlaskClient
    form_page: str
    token: str | None = None
    environ: dict[str, str] = field(default_factory=dict)

    def refresh(self, form_page: str | None = None) -> None:
        self.form_page = form_page or self.form_page
        self.token = csrf_token(self.client, self.form_page)

    def post(self, url: str, body: Body) -> TestResponse:
        if self.token is None:
            self.refresh()
        data, content_type = body.encode(self.token)
        response = self.client.post(url, data=data, content_type=content_type,
                                    environ_base=self.environ)  # fmt: skip
        check_post(response, body)
        self._consume_flashes(response)
        return response

    def _consume_flashes(self, response: TestResponse) -> None:
        # Flashed messages wait in the cookie until a page shows them: show them now and then,
        # which also checks that what they repeat back is escaped.
        cookie = next((c for c in response.headers.getlist("Set-Cookie")
                       if c.startswith("session=")), "")  # fmt: skip
        if len(cookie) > 2000 and response.location:
            assert_safe(self.client.get(response.location))


def check_post(response: TestResponse, body: Body) -> None:
    assert_safe(response)
    page = response.get_data(as_text=True)
    if response.status_code == 308:
        # A slug that decodes to "a/" makes "//" in the path: the router points to the address
        # with the slashes merged, on this site, and nothing is read or saved.
        path = response.request.path
        target = urlsplit(response.location)
        assert target.netloc in ("", "countersign.test"), response.location
        assert unquote(target.path) == re.sub("/{2,}", "/", path), response.location
        assert "//" in path
        return
    if body.huge:  # refused before it is read; an address that does not exist is simply not found
        assert response.status_code in (404, 405, 413), page[:500]
        assert response.status_code != 413 or "too large" in page
    elif not body.parses():
        # A urlencoded body that is not UTF-8 reads as an empty form: refused, nothing saved.
        assert response.status_code in (400, 404, 405), page[:500]
    else:
        assert "This form has expired" not in page, "the CSRF check refused a valid token"


def run(database_url: str, strategy: st.SearchStrategy, check: Callable[..., None]) -> None:
    """Run ``check`` on generated examples: the full count on SQLite, fewer on PostgreSQL."""
    postgres = database_url.startswith("postgresql")

    @settings(max_examples=PG_EXAMPLES if postgres else EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(example=strategy)
    def go(example: Any) -> None:
        check(example)

    go()


def nasty_only(database_url: str) -> bool:
    return database_url.startswith("postgresql")


@pytest.fixture
def content_dir(editable_content):
    """The real content, with no wait after failed quizzes: the fuzz fails them by the hundred."""
    policy = editable_content / POLICY / "policy.yaml"
    policy.write_text(policy.read_text().replace("cooldown_minutes: 15", "cooldown_minutes: 0"))
    return editable_content


@dataclass
class Ctx:
    app: Flask
    client: FlaskClient
    make_person: Callable[..., int]
    database_url: str

    def person(self, *roles: str, **kw: Any) -> int:
        return person(self.app, self.make_person, *roles, **kw)

    def as_role(self, *roles: str, **kw: Any) -> int:
        pid = self.person(*roles, **kw)
        sign_in(self.app, self.client, pid)
        return pid

    def bodies(self, **fields: st.SearchStrategy) -> st.SearchStrategy[Body]:
        return bodies(fields, nasty_only(self.database_url))

    def run(self, strategy: st.SearchStrategy, check: Callable[..., None]) -> None:
        run(self.database_url, strategy, check)

    def sql(self, fn: Callable[[Any], Any]) -> Any:
        with self.app.app_context():
            result = fn(db.session)
            db.session.commit()
            return result


Fuzzer = Callable[[Ctx, str], None]
FORMS: dict[str, Fuzzer] = {}


def form(*endpoints: str) -> Callable[[Fuzzer], Fuzzer]:
    """Registers the fuzz of one or more endpoints; it is called once per endpoint."""

    def register(fuzz: Fuzzer) -> Fuzzer:
        for endpoint in endpoints:
            FORMS[endpoint] = fuzz
        return fuzz

    return register


def texts(*values: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), st.text(max_size=40))


EMAILS = texts("person1@ladysmith.example", "PERSON1@LADYSMITH.EXAMPLE", "new@school.example",
               "a@b", "@", "x@y.z")  # fmt: skip
PASSWORDS = texts(PASSWORD, "long enough password", "short")
ROLES = texts("staff", "governor", "volunteer", "parent", "slt", "admin")
SCHOOLS = texts("none", "infant", "junior", "")


# --- the forms -----------------------------------------------------------------------------------


@form("auth.sign_in")
def _sign_in(c: Ctx, endpoint: str) -> None:
    c.person("staff", email="person1@ladysmith.example")
    fuzz = Fuzz(c.app, c.client, "/sign-in")
    ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "203.0.113.9"])

    def check(example: tuple[Body, str]) -> None:
        body, ip = example
        fuzz.environ = {"REMOTE_ADDR": ip}
        if fuzz.post("/sign-in", body).status_code == 302:  # signed in: sign out again
            c.client.post("/sign-out", data={"csrf_token": csrf_token(c.client, "/")})
            fuzz.refresh()

    # Never the right password: each wrong one counts towards the throttle, which then answers
    # without checking a password at all, so most examples stay cheap. Signing in is tested elsewhere.
    wrong = texts("long enough password", "short")
    c.run(st.tuples(c.bodies(email=EMAILS, password=wrong), ips), check)


@form("auth.sign_out")
def _sign_out(c: Ctx, endpoint: str) -> None:
    pid = c.as_role("staff")
    fuzz = Fuzz(c.app, c.client, "/account/password")

    def check(body: Body) -> None:
        response = fuzz.post("/sign-out", body)
        if response.status_code == 302 and not body.huge:
            sign_in(c.app, c.client, pid)
            fuzz.refresh()

    c.run(c.bodies(), check)


@form("auth.sign_out_others")
def _sign_out_others(c: Ctx, endpoint: str) -> None:
    c.as_role("staff")
    fuzz = Fuzz(c.app, c.client, "/account/password")  # this session carries on after each
    c.run(c.bodies(), lambda body: fuzz.post("/account/sign-out-others", body))


@form("auth.change_password")
def _change_password(c: Ctx, endpoint: str) -> None:
    pid = c.as_role("staff")
    fuzz = Fuzz(c.app, c.client, "/account/password")
    current = st.one_of(st.just(PASSWORD), texts("wrong password"))

    def check(example: tuple[Body, bool]) -> None:
        body, same = example
        if same:  # the confirmation repeats the new password, as it usually would
            new = next((v for n, v in body.pairs if n == "password"), None)
            body.pairs = [(n, new if n == "confirm" and new is not None else v)
                          for n, v in body.pairs]  # fmt: skip
        if fuzz.post("/account/password", body).status_code == 302:
            c.sql(lambda s: setattr(s.get(Person, pid), "password_hash", CHEAP_HASH))

    same = st.integers(0, 7).map(lambda n: n == 0)  # a success costs a scrypt hash: not too many
    c.run(st.tuples(c.bodies(current=current, password=PASSWORDS, confirm=PASSWORDS), same), check)


@form("auth.forgot_password")
def _forgot_password(c: Ctx, endpoint: str) -> None:
    c.person("staff", email="person1@ladysmith.example")
    fuzz = Fuzz(c.app, c.client, "/forgot-password")
    c.run(c.bodies(email=EMAILS), lambda body: fuzz.post("/forgot-password", body))


@form("auth.accept_invite", "auth.reset_password")
def _set_password(c: Ctx, endpoint: str) -> None:
    invited = c.make_person("volunteer", password=None)
    reset = c.person("staff")
    links = {INVITE: ("/invite/", invited), RESET: ("/reset-password/", reset)}

    def link(purpose: str) -> str:
        prefix, pid = links[purpose]
        token = c.sql(lambda s: make_link_token(c.app.config["SECRET_KEY"], purpose,
                                                s.get(Person, pid)))  # fmt: skip
        return prefix + token

    fuzz = Fuzz(c.app, c.client, link(INVITE if endpoint == "auth.accept_invite" else RESET))
    tokens = st.one_of(st.none(), st.sampled_from(["x", "eyJwIjoxfQ.x.y", "%00", "a" * 3000]))

    purpose = INVITE if endpoint == "auth.accept_invite" else RESET

    def check(example: tuple[Body, str | None, bool]) -> None:
        body, bad_token, same = example
        url = link(purpose) if bad_token is None else links[purpose][0] + bad_token
        if same:
            new = next((v for n, v in body.pairs if n == "password"), None)
            body.pairs = [(n, new if n == "confirm" and new is not None else v)
                          for n, v in body.pairs]  # fmt: skip
        response = fuzz.post(url, body)
        if bad_token is not None:
            assert response.status_code in (400, 404, 413)
        if response.status_code == 302:  # signed in afresh: a new session needs a new token
            fuzz.refresh(link(purpose))

    fields = c.bodies(password=PASSWORDS, confirm=PASSWORDS)
    c.run(st.tuples(fields, tokens, st.integers(0, 7).map(lambda n: n == 0)), check)


@form("admin.new_person", "admin.person")
def _person_form(c: Ctx, endpoint: str) -> None:
    me = c.as_role("admin")
    other = c.person("staff", name="<svg onload=alert(1)>")
    fuzz = Fuzz(c.app, c.client, "/admin/people/new")
    fields = c.bodies(name=texts("Sam Example"), email=EMAILS, roles=ROLES, schools=SCHOOLS)
    if endpoint == "admin.new_person":
        urls = st.just("/admin/people/new")
    else:
        urls = weird_ids(me, other, other, other).map(lambda i: f"/admin/people/{i}")
    c.run(st.tuples(urls, fields), lambda e: fuzz.post(*e))


@form(
    "admin.deactivate_person",
    "admin.reactivate_person",
    "admin.invite_person",
    "admin.erase",
    "admin.sign_out_everywhere",
)
def _person_buttons(c: Ctx, endpoint: str) -> None:
    me = c.as_role("admin")
    others = [c.person("parent", name='<img src=x onerror="alert(1)">', password=None),
              c.person("staff", name="\u202eRTL")]  # fmt: skip
    fuzz = Fuzz(c.app, c.client, "/admin/people")
    # deactivate, reactivate, invite, erase or sign-out-everywhere
    action = (
        endpoint.split(".")[1].split("_")[0] if "_out_" not in endpoint else "sign-out-everywhere"
    )
    urls = weird_ids(me, *others, *others).map(lambda i: f"/admin/people/{i}/{action}")
    c.run(st.tuples(urls, c.bodies()), lambda e: fuzz.post(*e))


@form("admin.invite_all")
def _invite_all(c: Ctx, endpoint: str) -> None:
    c.as_role("admin")
    c.person("parent", name="<script>alert(1)</script>", password=None)
    c.sql(lambda s: setattr(s.scalars(select(Person).where(Person.name.like("<script>%"))).one(),
                            "password_hash", None))  # fmt: skip
    fuzz = Fuzz(c.app, c.client, "/admin/people")
    c.run(c.bodies(), lambda body: fuzz.post("/admin/people/invite-all", body))


@form("admin.import_page")
def _import(c: Ctx, endpoint: str) -> None:
    c.as_role("admin")
    fuzz = Fuzz(c.app, c.client, "/admin/people/import")
    fuzz.refresh()
    cell = st.one_of(NASTY, st.text(max_size=20)) if not nasty_only(c.database_url) else NASTY
    row = st.lists(cell, min_size=0, max_size=5).map(lambda cells: b",".join(map(_bytes, cells)))
    header = st.sampled_from([b"name,email,roles,schools", b"\xef\xbb\xbfname,email,roles,schools",
                              b"email,name", b""])  # fmt: skip
    content = st.one_of(
        st.tuples(header, st.lists(row, max_size=4)).map(lambda t: b"\r\n".join([t[0], *t[1]])),
        st.sampled_from([b"name,email,roles,schools\r\nSam,sam@x.example,staff,LIS\r\n",
                         b"name,email,roles,schools\nSam,sam@x.example,staff,LIS,extra,cells\n",
                         b'name,email,roles,schools\n"unterminated,x,y,z\n', b"\x00" * 100,
                         HUGE]),
    )  # fmt: skip
    filename = st.one_of(texts("people.csv", "people.txt", "people.exe", "", "../../x.csv",
                               "a\x00.csv", "\u202evsc.exe"), st.just(None))  # fmt: skip
    files = st.lists(st.tuples(content, filename), max_size=2)

    def check(example: tuple[list[tuple[bytes, str | None]], Body]) -> None:
        uploads, extra = example
        data: dict[str, Any] = {"csrf_token": fuzz.token}
        for name, value in extra.pairs:
            data.setdefault(name if name != "csrf_token" else "x", []).append(value)
        data["file"] = [FileStorage(BytesIO(b), filename=n) if n is not None else b.decode("latin-1")
                        for b, n in uploads]  # fmt: skip
        values = MultiDict()
        for key, vs in data.items():
            for v in vs if isinstance(vs, list) else [vs]:
                values.add(key, v.decode("latin-1") if isinstance(v, bytes) else v)
        # Encoded in memory: the test client would spool a large body to a temporary file that
        # nothing closes.
        boundary, encoded = encode_multipart(values)
        response = c.client.post("/admin/people/import", data=encoded,
                                 content_type=f"multipart/form-data; boundary={boundary}")  # fmt: skip
        assert_safe(response)
        if any(b is HUGE for b, _ in uploads):
            assert response.status_code == 413
        else:
            assert "This form has expired" not in response.get_data(as_text=True)
        fuzz._consume_flashes(response)

    c.run(st.tuples(files, c.bodies()), check)


@form("tokens.tokens", "tokens.revoke_token")
def _tokens(c: Ctx, endpoint: str) -> None:
    c.as_role("admin")
    fuzz = Fuzz(c.app, c.client, "/admin/tokens/")
    fields = c.bodies(name=texts("Approvals workflow"), scopes=texts("training:read"))
    if endpoint == "tokens.tokens":
        urls = st.just("/admin/tokens/")
    else:
        c.client.post("/admin/tokens/", data={"csrf_token": csrf_token(c.client, "/admin/tokens/"),
                                              "name": "<svg onload=alert(1)>",
                                              "scopes": "training:read"})  # fmt: skip
        urls = weird_ids(1, 1, 1).map(lambda i: f"/admin/tokens/{i}/revoke")
    c.run(st.tuples(urls, fields), lambda e: fuzz.post(*e))


@form("webhooks.webhooks", "webhooks.stop_webhook")
def _webhooks(c: Ctx, endpoint: str) -> None:
    c.as_role("admin")
    fuzz = Fuzz(c.app, c.client, "/admin/webhooks/")
    hook_urls = texts("https://hooks.example/countersign", "http://127.0.0.1/x", "javascript:x",
                      "https://x.example/<script>", "file:///etc/passwd")  # fmt: skip
    if endpoint == "webhooks.webhooks":
        urls = st.just("/admin/webhooks/")
    else:
        page = "/admin/webhooks/"
        c.client.post(page, data={"csrf_token": csrf_token(c.client, page),
                                  "url": "https://hooks.example/<script>"})  # fmt: skip
        urls = weird_ids(1, 1, 1).map(lambda i: f"/admin/webhooks/{i}/stop")
    c.run(st.tuples(urls, c.bodies(url=hook_urls)), lambda e: fuzz.post(*e))


LMS = "https://lms.example"


def _lms_platform(c: Ctx) -> tuple[str, str]:
    """A registered platform with a pasted key set (so nothing is fetched): (private key, kid)."""
    from lti.models import LtiDeployment, LtiPlatform
    from tests.lti_platform import new_key

    pem, public = new_key()
    c.sql(lambda s: s.add(LtiPlatform(
        name="<b>LMS</b>", issuer=LMS, client_id="fuzz", auth_login_url=f"{LMS}/auth",
        auth_token_url=f"{LMS}/token", key_set={"keys": [public]}, role_map={"Learner": "staff"},
        deployments=[LtiDeployment(deployment_id="1")])))  # fmt: skip
    return pem, public["kid"]


@form("lti.login", "lti.launch")
def _lti_launch(c: Ctx, endpoint: str) -> None:
    import jwt

    pem, kid = _lms_platform(c)
    fuzz = Fuzz(c.app, c.client, "/sign-in")
    if endpoint == "lti.login":
        fields = c.bodies(iss=texts(LMS, "https://other.example"), login_hint=texts("17"),
                          client_id=texts("fuzz"), lti_message_hint=texts("m"),
                          target_link_uri=texts("http://countersign.test/", "javascript:x"),
                          lti_deployment_id=texts("1"))  # fmt: skip

        def check(body: Body) -> None:
            response = fuzz.post("/lti/login", body)
            if response.status_code == 302:  # only ever to the registered platform's login
                assert response.location.startswith(f"{LMS}/auth?"), response.location

        c.run(fields, check)
        return
    claims = st.fixed_dictionaries({
        "iss": texts(LMS), "aud": st.one_of(texts("fuzz"), st.lists(texts("fuzz"), max_size=3)),
        "sub": texts("u1"), "nonce": texts("n"), "email": EMAILS, "name": texts("<b>x</b>"),
        "exp": st.integers(0, 2**40), "iat": st.integers(0, 2**40),
        "https://purl.imsglobal.org/spec/lti/claim/deployment_id": texts("1"),
        "https://purl.imsglobal.org/spec/lti/claim/message_type": texts("LtiResourceLinkRequest"),
        "https://purl.imsglobal.org/spec/lti/claim/version": texts("1.3.0"),
        "https://purl.imsglobal.org/spec/lti/claim/roles": st.lists(texts("Learner"), max_size=2),
    })  # fmt: skip
    signed = claims.map(lambda cl: jwt.encode(cl, pem, algorithm="RS256", headers={"kid": kid}))
    tokens = st.one_of(signed, texts("a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30."))
    c.run(c.bodies(id_token=tokens, state=texts("state-x")),
          lambda body: fuzz.post("/lti/launch", body))  # fmt: skip


@form("lti.new_platform", "lti.edit_platform", "lti.retry_grades")
def _lti_admin(c: Ctx, endpoint: str) -> None:
    c.as_role("admin")
    _lms_platform(c)
    fuzz = Fuzz(c.app, c.client, "/admin/lti/new")
    key_sets = texts('{"keys": []}', '{"keys": [{"kty": "RSA"}]}', '{"keys": [{"kty": "oct", "k": "x"}]}',
                     "[]", "{", '{"keys": [1]}')  # fmt: skip
    urls = texts(LMS, f"{LMS}/auth", "http://127.0.0.1/x", "javascript:alert(1)", "https://")
    fields = c.bodies(name=texts("Moodle"), issuer=urls, client_id=texts("c"),
                      auth_login_url=urls, auth_token_url=urls, key_set_url=urls,
                      key_set=key_sets, deployment_ids=texts("1\n2", ""),
                      role_map=texts("Learner = staff", "Instructor = admin", "x", "= staff"),
                      school=SCHOOLS, active=texts("y", ""))  # fmt: skip
    if endpoint == "lti.retry_grades":
        c.run(c.bodies(), lambda body: fuzz.post("/admin/lti/grades/retry", body))
        return
    if endpoint == "lti.new_platform":
        target = st.just("/admin/lti/new")
    else:
        target = weird_ids(1, 1, 1).map(lambda i: f"/admin/lti/{i}")
    c.run(st.tuples(target, fields), lambda e: fuzz.post(*e))


def _lms_requests(c: Ctx, pid: int, count: int) -> tuple[list[int], str]:
    """Links waiting for ``pid``'s confirmation: their ids, and the emailed link of the first."""
    from lti.links import _token_hash
    from lti.models import LtiLinkRequest, LtiPlatform

    def make(s: Any) -> list[int]:
        platform_id = s.scalar(select(LtiPlatform.id).where(LtiPlatform.issuer == LMS))
        rows = [LtiLinkRequest(platform_id=platform_id, subject=f"<b>u{n}</b>", person_id=pid,
                               token_hash=_token_hash("fuzz-link") if n == 0 else None,
                               expires_at=utcnow() + timedelta(hours=1)) for n in range(count)]  # fmt: skip
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]

    return c.sql(make), "/lti/connect/fuzz-link"


@form("lti.connect", "lti.connect_link", "lti.remove_identity")
def _lti_connect(c: Ctx, endpoint: str) -> None:
    from lti.models import LtiIdentity, LtiPlatform

    _lms_platform(c)
    actions = texts("confirm", "decline_all")
    codes = texts("ABC 234", "abc-234", "")
    if endpoint == "lti.connect":
        _lms_requests(c, c.as_role("staff"), 3)
        fuzz = Fuzz(c.app, c.client, "/lti/connect")
        c.run(c.bodies(code=codes, action=actions),
              lambda body: fuzz.post("/lti/connect", body))  # fmt: skip
        return
    if endpoint == "lti.connect_link":
        _, link = _lms_requests(c, c.person("staff"), 1)
        fuzz = Fuzz(c.app, c.client, "/sign-in")  # following the link needs no session
        urls = st.one_of(st.just(link), texts("x").map(lambda t: f"/lti/connect/{t}"))
        c.run(st.tuples(urls, c.bodies(code=codes, action=actions)),
              lambda e: fuzz.post(*e))  # fmt: skip
        return
    c.as_role("admin")
    pid = c.person("staff", name="<b>Linked</b>")

    def link(s: Any) -> int:
        platform_id = s.scalar(select(LtiPlatform.id).where(LtiPlatform.issuer == LMS))
        identity = LtiIdentity(platform_id=platform_id, subject="<b>u</b>", person_id=pid)
        s.add(identity)
        s.flush()
        return identity.id

    identity_id = c.sql(link)
    fuzz = Fuzz(c.app, c.client, f"/admin/people/{pid}")
    urls = st.tuples(weird_ids(pid), weird_ids(identity_id)).map(
        lambda ids: f"/admin/people/{ids[0]}/lti/{ids[1]}/remove"
    )
    c.run(st.tuples(urls, c.bodies()), lambda e: fuzz.post(*e))


@form("xapi.retry")
def _xapi(c: Ctx, endpoint: str) -> None:
    from core.outbox import OutboxMessage
    from xapi.outbox import STATEMENT

    c.as_role("admin")
    nasty = "<script>alert(1)</script>"
    statement = {
        "actor": {"mbox": f"mailto:{nasty}"},
        "object": {"definition": {"name": {"en-GB": nasty}}},
    }
    c.sql(lambda s: s.add(OutboxMessage(
        topic=STATEMENT, key=f"{STATEMENT}:read:0", payload={
            "statement_id": "00000000-0000-4000-8000-000000000000", "verb": nasty,
            "statement": statement}, attempts=6, last_error=nasty, gave_up_at=utcnow())))  # fmt: skip
    fuzz = Fuzz(c.app, c.client, "/admin/xapi/")
    c.run(c.bodies(retry=texts("1", "all")), lambda body: fuzz.post("/admin/xapi/retry", body))


@form("reminders.index", "reminders.send_now")
def _reminders(c: Ctx, endpoint: str) -> None:
    from core.outbox import enqueue
    from reminders.models import Reminder

    c.as_role("admin")
    nasty = "<script>alert(1)</script>"
    learner = c.person("staff", name=nasty)

    def queued(s: Any) -> None:
        s.add(Reminder(id=1, person_id=learner, kind=nasty, cycle=nasty, detail={}))
        s.flush()
        enqueue(s, "reminder.email", {"reminder_id": 1}, person_id=learner)

    c.sql(queued)
    fuzz = Fuzz(c.app, c.client, "/admin/reminders/")
    if endpoint == "reminders.send_now":
        c.run(c.bodies(), lambda body: fuzz.post("/admin/reminders/send-now", body))
        return
    days, hours = texts("7", "0", "-1", "366", "1e3", "7.5"), texts("20", "8", "24", "-1", "x")
    fields = c.bodies(first_after_days=days, every_days=days, max_times=days, quiet_from=hours,
                      quiet_until=hours, not_started_on=texts("y", "n", ""),
                      expired_on=texts("y", ""))  # fmt: skip
    c.run(fields, lambda body: fuzz.post("/admin/reminders/", body))


@form("reminders_account.digest")
def _digest_choice(c: Ctx, endpoint: str) -> None:
    c.as_role("governor")
    fuzz = Fuzz(c.app, c.client, "/account/digest")
    c.run(
        c.bodies(weekly_digest=texts("y", "n", "")), lambda body: fuzz.post("/account/digest", body)
    )


def _runners(c: Ctx, trained: bool) -> list[int]:
    ids = [c.person("staff", name="<b>Runner</b> one"), c.person("staff", name="Runner\u202e two"),
           c.person("volunteer", name="Runner javascript:alert(1)")]  # fmt: skip
    if trained:
        train_people(c.app, *ids)
    return ids


def _application(c: Ctx, applicant: int, runners: list[int], approve_as: int | None = None) -> int:
    from approvals.rules import ApplicationData, decide, submit_application

    def make(s: Any) -> int:
        data = ApplicationData(name="<script>alert(1)</script>", platform="Facebook", aim="Aim",
                               audience="Parents", promotion="Newsletter", visibility="open",
                               runner_ids=tuple(runners))  # fmt: skip
        application = submit_application(s, s.get(Person, applicant), data)
        if approve_as is not None:
            decide(s, application, s.get(Person, approve_as), True, "")
        return application.id

    return c.sql(make)


@form("approvals.apply")
def _apply(c: Ctx, endpoint: str) -> None:
    runners = _runners(c, trained=False)
    c.as_role("staff")
    fuzz = Fuzz(c.app, c.client, "/accounts/apply")
    fields = c.bodies(name=texts("History"), platform=texts("Facebook", "X (Twitter)"),
                      aim=texts("Aim"), audience=texts("Parents"), promotion=texts("Letters"),
                      visibility=texts("open", "closed"), runners=weird_ids(*runners))  # fmt: skip
    c.run(fields, lambda body: fuzz.post("/accounts/apply", body))


@form("approvals.application")
def _decide(c: Ctx, endpoint: str) -> None:
    runners = _runners(c, trained=False)
    applicant = c.person("staff")  # someone else: nobody decides their own application
    c.as_role("slt")
    pending = {"id": _application(c, applicant, runners)}
    fuzz = Fuzz(c.app, c.client, f"/accounts/applications/{pending['id']}")
    ids = st.one_of(st.just(None), weird_ids())

    def check(example: tuple[str | None, Body]) -> None:
        url_id, body = example
        url = f"/accounts/applications/{pending['id'] if url_id is None else url_id}"
        if fuzz.post(url, body).status_code == 302:  # decided: the next examples get a new one
            pending["id"] = _application(c, applicant, runners)

    c.run(st.tuples(ids, c.bodies(decision=texts("approve", "reject"), reason=texts("No"))),
          check)  # fmt: skip


@form("approvals.record", "approvals.account")
def _record_and_register(c: Ctx, endpoint: str) -> None:
    runners = _runners(c, trained=True)
    admin = c.as_role("admin", "slt")
    applicant = c.person("staff")  # someone else: nobody decides their own application
    current = {"application": _application(c, applicant, runners, approve_as=admin), "account": 0}
    fuzz = Fuzz(c.app, c.client, f"/accounts/applications/{current['application']}")
    handles = texts("@LadysmithHistory", "https://facebook.com/x", "password: hunter2",
                    "javascript:alert(1)")  # fmt: skip
    record = c.bodies(platform=texts("Facebook"), handle=handles)
    manage = c.bodies(action=texts("transfer", "close"), **{"transfer-runners":
                      weird_ids(*runners), "close-reason": texts("Closed")})  # fmt: skip

    def check(example: tuple[str, str | None, Body]) -> None:
        which, url_id, body = example
        if which == "record":
            url = f"/accounts/applications/{url_id or current['application']}/account"
        else:
            url = f"/accounts/register/{url_id or current['account']}"
        response = fuzz.post(url, body)
        if response.status_code == 302 and "/accounts/register/" in (response.location or ""):
            if which == "record":  # recorded: the next record needs another approved application
                current["account"] = int(response.location.rstrip("/").rsplit("/", 1)[1])
                current["application"] = _application(c, applicant, runners, approve_as=admin)

    if endpoint == "approvals.account":  # an account on the register to hand over or close
        check(("record", None, Body([("platform", "Facebook"), ("handle", "@History")], "percent")))
        assert current["account"]
    which = "record" if endpoint == "approvals.record" else "account"
    ids = st.one_of(st.none(), st.none(), weird_ids())
    c.run(st.tuples(st.just(which), ids, record if which == "record" else manage), check)


def _learner(c: Ctx, complete: bool = False) -> int:
    from tests.test_journey import VOLUNTEER_MODULES, complete_modules

    pid = c.as_role("volunteer", name="Val Vol")
    if complete:
        complete_modules(c.app, c.client, VOLUNTEER_MODULES)
    return pid


SLUGS = st.one_of(st.sampled_from([POLICY, "nope", "%00", "..", "%ED%A0%80", "a" * 300, "a%2F"]),
                  st.text(max_size=10).map(lambda t: quote_from_bytes(t.encode(), safe=b"")))  # fmt: skip
MODULE_SLUGS = st.one_of(st.sampled_from([MODULE, "monitoring", "tone", "nope", "%00"]), SLUGS)


@form("training.mark_read")
def _mark_read(c: Ctx, endpoint: str) -> None:
    _learner(c)
    fuzz = Fuzz(c.app, c.client, f"/policies/{POLICY}/modules/{MODULE}")
    urls = st.tuples(SLUGS, MODULE_SLUGS).map(lambda t: f"/policies/{t[0]}/modules/{t[1]}/read")
    c.run(st.tuples(urls, c.bodies()), lambda e: fuzz.post(*e))


@form("quiz.intro", "quiz.attempt")
def _quiz(c: Ctx, endpoint: str) -> None:
    from quizzes.models import QuizAttempt

    pid = _learner(c)
    c.client.post(
        f"/policies/{POLICY}/modules/{MODULE}/read",
        data={"csrf_token": csrf_token(c.client, f"/policies/{POLICY}/modules/{MODULE}")},
    )
    intro = f"/policies/{POLICY}/modules/{MODULE}/quiz"
    fuzz = Fuzz(c.app, c.client, intro)
    started = fuzz.post(intro, Body([], "percent"))
    assert started.status_code == 302 and "/quiz/" in started.location

    def attempt(s: Any) -> tuple[str, dict[str, list[str]]]:
        row = s.scalars(select(QuizAttempt).where(QuizAttempt.person_id == pid)
                        .order_by(QuizAttempt.id.desc())).first()  # fmt: skip
        return row.public_id, right_answers(row)

    current = {"attempt": c.sql(attempt)}
    public_id, answers = current["attempt"]
    keys = st.sampled_from(sorted(f"q-{k}" for k in answers))
    options = st.one_of(st.sampled_from(sorted({o for v in answers.values() for o in v}
                                               | {"a", "b", "c", "d", "e"})), NASTY)  # fmt: skip

    def check(example: tuple[str, str | None, Body, bool]) -> None:
        which, url_part, body, right = example
        public_id, answers = current["attempt"]
        if which == "intro":
            url = intro if url_part is None else f"/policies/{POLICY}/modules/{url_part}/quiz"
        else:
            url = f"/quiz/{public_id if url_part is None else url_part}"
            if right:
                body.pairs = [(f"q-{k}", v) for k, vs in answers.items() for v in vs] + body.pairs
        response = fuzz.post(url, body)
        if response.status_code in (302, 303) and "/result" in (response.location or ""):
            fuzz.post(intro, Body([], "percent"))  # submitted: start the next attempt
            current["attempt"] = c.sql(attempt)

    quiz_fields = c.bodies(**{k: options for k in sorted(f"q-{k}" for k in answers)})
    if endpoint == "quiz.intro":
        strategy = st.tuples(st.just("intro"), st.one_of(st.none(), MODULE_SLUGS), c.bodies(),
                             st.just(False))  # fmt: skip
    else:
        strategy = st.tuples(
            st.just("attempt"),
            st.one_of(st.none(), st.none(), SLUGS),
            st.one_of(quiz_fields, c.bodies(**{"q-x": keys})),
            st.booleans(),
        )
    c.run(strategy, check)


@form("training.sign")
def _sign(c: Ctx, endpoint: str) -> None:
    _learner(c, complete=True)
    url = f"/policies/{POLICY}/sign"
    fuzz = Fuzz(c.app, c.client, url)
    fields = c.bodies(full_name=texts("Val Vo", "Val  Vol!", "VAL VOL\x00x"),
                      confirm=texts("y", "1", "on"))  # fmt: skip

    def not_the_name(value: str | bytes) -> str | bytes:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        folded = unicodedata.normalize("NFKC", text).casefold()
        return "Someone Else" if "val" in folded or "vol" in folded else value

    def check(body: Body) -> None:
        # Never the signer's name, so always the form again with the reason.
        body.pairs = [(n, not_the_name(v) if n == "full_name" else v) for n, v in body.pairs]
        response = fuzz.post(url, body)
        if not body.huge and body.parses():
            assert response.status_code == 400

    c.run(fields, check)


# The second factor: a person half-way through signing in, and a signed-in person's own methods.
CODES = texts("123456", "000000", "abcd-efgh-ijkm-npqr-stuv-wxyz", "12 34 56")
CREDENTIALS = texts('{"rawId": "ZnV6ei1jcmVkZW50aWFs", "id": "x", "type": "public-key", '
                    '"response": {}}', "{}", "[]", "null", '{"rawId": 1}', '{"rawId": "%%%"}')  # fmt: skip


def _methods(c: Ctx, pid: int, credential: bytes = b"fuzz-credential") -> list[int]:
    """An authenticator app and a (made-up) passkey, plus recovery codes; their ids."""

    def add(s: Any) -> list[int]:
        rows = [
            SecondFactor(person_id=pid, method=TOTP, label="App", totp_secret="A" * 32,
                         created_at=utcnow()),
            SecondFactor(person_id=pid, method=PASSKEY, label="Key", credential_id=credential,
                         public_key=b"\xa5\x01\x02", sign_count=0, created_at=utcnow()),
        ]  # fmt: skip
        s.add_all(rows)
        new_recovery_codes(s, s.get(Person, pid))
        s.flush()
        return [r.id for r in rows]

    return c.sql(add)


@form("mfa.verify", "mfa.verify_passkey", "mfa.recover", "mfa.enrol", "mfa.enrol_with_passkey")
def _second_step(c: Ctx, endpoint: str) -> None:
    enrolling = endpoint.startswith("mfa.enrol")
    c.app.config["MFA_ROLES"] = "admin"
    pid = c.person("admin", name="<svg onload=alert(1)>")
    if not enrolling:
        _methods(c, pid)
    page = "/sign-in/second-factor/set-up" if enrolling else "/sign-in/second-factor"
    url = {"mfa.verify": page, "mfa.enrol": page, "mfa.recover": page + "/recovery"}.get(
        endpoint, page + "/passkey"
    )

    def password_step() -> None:
        c.sql(lambda s: s.execute(delete(SignInAttempt)))  # the fuzz's wrong codes: forgotten
        sign_in(c.app, c.client, pid)

    password_step()
    fuzz = Fuzz(c.app, c.client, page)

    def check(body: Body) -> None:
        response = fuzz.post(url, body)
        assert response.status_code != 302 or "/sign-in" in response.location
        if response.status_code == 302 and "second-factor" not in response.location:
            password_step()  # the half-signed state ended: start again
            fuzz.refresh()

    c.run(c.bodies(code=CODES, recovery_code=CODES, credential=CREDENTIALS), check)


@form("mfa.add_totp", "mfa.add_passkey", "mfa.remove", "mfa.renew_codes")
def _own_methods(c: Ctx, endpoint: str) -> None:
    pid = c.as_role("staff", name="<svg onload=alert(1)>")
    mine = _methods(c, pid)
    theirs = _methods(c, c.person("staff"), b"theirs")
    fuzz = Fuzz(c.app, c.client, "/account/second-factor")
    fields = c.bodies(code=CODES, credential=CREDENTIALS)
    if endpoint == "mfa.remove":
        urls = weird_ids(*mine, *theirs).map(lambda i: f"/account/second-factor/{i}/remove")
    else:
        path = {"mfa.add_totp": "authenticator", "mfa.add_passkey": "passkey",
                "mfa.renew_codes": "recovery-codes"}[endpoint]  # fmt: skip
        urls = st.just(f"/account/second-factor/{path}")
    c.run(st.tuples(urls, fields), lambda e: fuzz.post(*e))


@form("mfa.admin_reset")
def _admin_reset(c: Ctx, endpoint: str) -> None:
    me = c.as_role("admin")
    other = c.person("governor", name="<svg onload=alert(1)>")
    _methods(c, me)
    _methods(c, other, b"theirs")
    fuzz = Fuzz(c.app, c.client, f"/admin/people/{other}")
    urls = weird_ids(me, other).map(lambda i: f"/admin/people/{i}/second-factor/reset")
    c.run(st.tuples(urls, c.bodies()), lambda e: fuzz.post(*e))


def _post_endpoints(app: Flask) -> set[str]:
    return {rule.endpoint for rule in app.url_map.iter_rules()
            if "POST" in (rule.methods or ()) and not rule.rule.startswith("/api/")}  # fmt: skip


def test_every_form_has_a_fuzz_case(app: Flask) -> None:
    missing = _post_endpoints(app) - set(FORMS)
    assert not missing, f"forms with no fuzz case: {sorted(missing)}"
    assert not set(FORMS) - _post_endpoints(app), "fuzz cases for forms that no longer exist"


@pytest.mark.usefixtures("published")
@pytest.mark.parametrize("endpoint", sorted(FORMS))
def test_form_never_errors_nor_runs_markup(
    app: Flask,
    client: FlaskClient,
    make_person: Callable[..., int],
    database_url: str,
    endpoint: str,
) -> None:
    FORMS[endpoint](Ctx(app, client, make_person, database_url), endpoint)


# --- query strings of the pages that read them ---------------------------------------------------

PAGES: dict[str, tuple[str, dict[str, st.SearchStrategy[str]]]] = {
    "auth.sign_in": ("/sign-in", {"next": texts("/", "//evil.example", "https://evil.example",
                                                "/\\evil.example", "javascript:alert(1)",
                                                "/%0d%0aSet-Cookie:x=1")}),
    "admin.people": ("/admin/people", {"q": texts("Person"), "role": ROLES, "school": SCHOOLS,
                                       "state": texts("active", "inactive", "all"),
                                       "page": texts("1", "2")}),
    "quiz.bank": (f"/authoring/quizzes/{POLICY}/{MODULE}", {"order": texts("bank", "wrong")}),
    "approvals.register_page": ("/accounts/register", {"closed": texts("1", "0")}),
    "reports.index": ("/reports/", {"policy": texts(POLICY)}),
    "reports.people": ("/reports/people", {
        "school": SCHOOLS, "role": ROLES, "q": texts("Person"), "page": texts("1", "2"),
        "status": texts("not_trained", "never_trained", "expiring", "expired", "outdated",
                        "inactive"), "days": texts("30", "366", "367"), "policy": texts(POLICY)}),
    "reports.evidence_pack": ("/reports/schools/infant/evidence.pdf", {"policy": texts(POLICY)}),
    "audit.index": ("/audit/", {"event": texts("sign_in.failed", "sign_out"),
                                "person": texts("1", "2"), "since": texts("2026-01-01"),
                                "until": texts("2026-12-31", "2026-02-30"),
                                "before": texts("1", "100")}),
}  # fmt: skip
PAGES["reports.people_csv"] = ("/reports/people.csv", PAGES["reports.people"][1])
PAGES["lti.login"] = ("/lti/login", {"iss": texts(LMS), "login_hint": texts("17"),
                                     "client_id": texts("fuzz"), "lti_message_hint": texts("m")})  # fmt: skip


def _reads_query(view: Callable[..., Any]) -> bool:
    """Whether a view, or a helper of its own module that it calls, reads the query string."""
    view = inspect.unwrap(view)
    module = inspect.getmodule(view)
    helpers = [getattr(module, name) for name in view.__code__.co_names
               if inspect.isfunction(getattr(module, name, None))
               and getattr(module, name).__module__ == module.__name__]  # fmt: skip
    return any("request.args" in inspect.getsource(f) for f in [view, *helpers])


def test_every_page_that_reads_its_query_string_has_a_fuzz_case(app: Flask) -> None:
    reading = {rule.endpoint for rule in app.url_map.iter_rules()
               if "GET" in (rule.methods or ()) and not rule.rule.startswith("/api/")
               and _reads_query(app.view_functions[rule.endpoint])}  # fmt: skip
    assert reading - set(PAGES) == set(), "pages reading a query string with no fuzz case"


@dataclass
class Query:
    pairs: list[tuple[str, str | bytes]]
    raw: bool

    def parses(self) -> bool:
        try:
            self.environ()["QUERY_STRING"].encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def environ(self) -> dict[str, str]:
        """QUERY_STRING as WSGI carries it: bytes as latin-1, percent-encoded or not."""
        if self.raw:
            text = b"&".join(_bytes(n).replace(b"&", b"%26") + b"=" + _bytes(v).replace(b"&", b"%26")
                             for n, v in self.pairs)  # fmt: skip
        else:
            text = b"&".join(quote_from_bytes(_bytes(n), safe=b"").encode() + b"="
                             + quote_from_bytes(_bytes(v), safe=b"").encode()
                             for n, v in self.pairs)  # fmt: skip
        return {"QUERY_STRING": text.decode("latin-1")}


@pytest.mark.usefixtures("published")
@pytest.mark.parametrize("endpoint", sorted(PAGES))
def test_query_string_never_errors_nor_runs_markup(
    app: Flask,
    client: FlaskClient,
    make_person: Callable[..., int],
    database_url: str,
    endpoint: str,
) -> None:
    c = Ctx(app, client, make_person, database_url)
    c.person("staff", name="<script>alert(1)</script>", schools=("infant",))
    c.as_role("admin", "governor", "slt", name='"><svg onload=alert(1)>')
    url, fields = PAGES[endpoint]
    value = NASTY if nasty_only(database_url) else ANY_VALUE
    own = st.sampled_from(sorted(fields)).flatmap(
        lambda n: st.tuples(st.just(n), st.one_of(fields[n], value))
    )
    other = st.tuples(st.text(max_size=8), value)
    pairs = st.lists(st.one_of(own, own, other), max_size=6)
    if endpoint == "reports.evidence_pack":  # a PDF each time is slow: mostly ask for no policy
        pairs = pairs.map(lambda p: [("policy", "nope"), *p]) | pairs.filter(lambda p: len(p) == 0)

    def check(query: Query) -> None:
        response = client.get(url, environ_overrides=query.environ())
        assert_safe(response)
        if response.status_code in (301, 302, 303):
            location = response.location or ""
            assert location.startswith("/") and not location.startswith(("//", "/\\")), location
        has_nul = any("\x00" in _bytes(v).decode("utf-8", "replace") for _, v in query.pairs)
        if has_nul and not query.raw:
            assert response.status_code == 400
        if not query.parses():  # raw bytes that are not UTF-8 cannot be read: refused plainly
            assert response.status_code == 400

    c.run(st.builds(Query, pairs=pairs, raw=st.booleans()), check)


# --- what the fuzz found, kept as plain examples -------------------------------------------------


@pytest.mark.usefixtures("published")
def test_a_raw_query_string_that_is_not_utf8_is_refused_plainly(client: FlaskClient) -> None:
    for raw in ("q=\xed\xa0\x80", "q=caf\xe9"):  # bytes as WSGI carries them (latin-1)
        response = client.get("/sign-in", environ_overrides={"QUERY_STRING": raw})
        assert response.status_code == 400
        assert_safe(response)


@pytest.mark.usefixtures("published")
def test_nul_in_an_address_is_refused_plainly(app: Flask, client: FlaskClient, make_person) -> None:
    sign_in(app, client, person(app, make_person, "volunteer"))
    for url in (f"/policies/%00/modules/{MODULE}", "/quiz/%00", "/verify/%00"):
        assert client.get(url).status_code == 400, url
    token = csrf_token(client, f"/policies/{POLICY}/modules/{MODULE}")
    response = client.post(f"/policies/%00/modules/{MODULE}/read", data={"csrf_token": token})
    assert response.status_code == 400


@pytest.mark.usefixtures("published")
def test_a_next_address_with_a_line_break_leads_home(app: Flask, client, make_person) -> None:
    sign_in(app, client, person(app, make_person, "staff"))
    response = client.get("/sign-in?next=/history%0d%0aSet-Cookie:%20x=1")
    assert response.status_code == 302
    assert response.location == "/" and "x=1" not in str(response.headers)


@pytest.mark.usefixtures("published")
def test_the_api_refuses_a_null_policy(app: Flask, client: FlaskClient, make_person) -> None:
    from api.tokens import create_token

    pid = make_person("staff")
    with app.app_context():
        secret = create_token(db.session, "Check", ["training:read"]).secret
        db.session.commit()
    response = client.post("/api/v1/training-status/check", json={"people": [pid], "policy": None},
                           headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_policy"
