"""Passkeys in real headless Chromium, with its virtual authenticator driven through the DevTools
protocol: an administrator enrols one at their first sign-in, signs out, signs in with it; a key
that is not theirs, and a passkey they removed, do not get them in."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from audit.models import AuditEvent
from core.db import db
from mfa.models import SecondFactor
from people.models import SignInAttempt
from tests.browser.conftest import check_accessibility, served, watch_console
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser]

EMAIL = "alex@ladysmith.example"


@pytest.fixture
def app_config() -> dict:
    return {"SERVER_NAME": None, "MFA_ROLES": "admin,slt,governor"}


@pytest.fixture
def site(app) -> Iterator[str]:
    """The app on loopback, addressed as localhost: a passkey's site must be a host name, and
    the configured address (not the request) says which."""
    with served(app) as server:
        url = f"http://localhost:{server.server_port}"
        app.config["BASE_URL"] = url
        yield url


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15000)
    page.console_problems = watch_console(page)
    page.cdp = context.new_cdp_session(page)
    page.cdp.send("WebAuthn.enable")
    yield page
    context.close()


def add_authenticator(page) -> str:
    made = page.cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return made["authenticatorId"]


def password_step(page, site: str) -> None:
    page.goto(site + "/sign-in")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()


def outcomes(app) -> list[bool]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(SignInAttempt.succeeded)
                .where(SignInAttempt.email == EMAIL)
                .order_by(SignInAttempt.id)
            )
        )


def test_passkey_enrol_sign_in_and_wrong_or_removed_keys_refused(page, site, app, make_person):
    pid = make_person("admin", name="Alex Administrator", email=EMAIL)
    first = add_authenticator(page)

    # First sign-in: the password, then setting up a passkey before any other page.
    password_step(page, site)
    page.get_by_role("heading", name="Set up a second factor").wait_for()
    check_accessibility(page, "set up a second factor")
    assert page.goto(site + "/").url.startswith(site + "/sign-in")  # not signed in yet
    password_step(page, site)
    page.get_by_role("button", name="Set up a passkey").click()
    page.get_by_role("heading", name="Your recovery codes").wait_for()
    assert page.locator(".recovery-codes li").count() == 10
    check_accessibility(page, "recovery codes")
    page.get_by_role("link", name="I have saved them, continue").click()
    page.get_by_role("button", name="Sign out").wait_for()
    (credential,) = page.cdp.send("WebAuthn.getCredentials", {"authenticatorId": first})[
        "credentials"
    ]
    with app.app_context():
        (factor,) = db.session.scalars(select(SecondFactor)).all()
        assert factor.method == "passkey" and factor.person_id == pid
        assert base64.b64decode(credential["credentialId"]) == factor.credential_id
        enrolled = db.session.scalars(
            select(AuditEvent.detail).where(AuditEvent.event == "second_factor.enrolled")
        ).all()
    assert len(enrolled) == 1 and '"passkey"' in enrolled[0]

    # Signing in again: password, then the passkey.
    sign_out(page)
    password_step(page, site)
    page.get_by_role("heading", name="Confirm it is you").wait_for()
    check_accessibility(page, "confirm it is you")
    page.get_by_role("button", name="Use my passkey").click()
    page.get_by_role("button", name="Sign out").wait_for()
    assert outcomes(app) == [True, True]

    # A key that is not theirs: the same credential id, but another authenticator's private key.
    sign_out(page)
    (credential,) = page.cdp.send("WebAuthn.getCredentials", {"authenticatorId": first})[
        "credentials"
    ]  # as it is now, with its signature counter
    page.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": first})
    impostor = add_authenticator(page)
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    page.cdp.send(
        "WebAuthn.addCredential",
        {
            "authenticatorId": impostor,
            "credential": {
                "credentialId": credential["credentialId"],
                "isResidentCredential": False,
                "rpId": "localhost",
                "privateKey": base64.b64encode(pkcs8).decode(),
                "signCount": 100,
            },
        },
    )
    password_step(page, site)
    page.get_by_role("button", name="Use my passkey").click()
    page.get_by_text("That passkey is not one set up for your account.").wait_for()
    assert page.get_by_role("button", name="Sign out").count() == 0
    assert outcomes(app) == [True, True, False]  # counted as a failed sign-in

    # With the real key back, add an authenticator app, then remove the passkey: it no longer
    # gets them in, and the page no longer offers it.
    page.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": impostor})
    restored = add_authenticator(page)
    page.cdp.send("WebAuthn.addCredential", {"authenticatorId": restored, "credential": credential})
    page.get_by_role("button", name="Use my passkey").click()
    page.get_by_role("button", name="Sign out").wait_for()
    page.goto(site + "/account/second-factor")
    check_accessibility(page, "your second factor")
    page.get_by_role("link", name="Add an authenticator app").click()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Check the code").click()
    page.get_by_text("Authenticator app added.").wait_for()
    page.get_by_role("button", name="Remove Passkey or security key").click()
    page.get_by_text("Passkey or security key removed.").wait_for()
    sign_out(page)
    password_step(page, site)
    page.get_by_role("heading", name="Confirm it is you").wait_for()
    assert page.get_by_role("button", name="Use my passkey").count() == 0
    assert page.get_by_label("Code from your authenticator app").is_visible()
    assert page.console_problems == []
