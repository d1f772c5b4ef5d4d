"""Webhooks: tell other systems when someone's trained status changes.

Each person's last announced status per policy is kept (``StatusSnapshot``); after anything that may
change a status, the rule is asked again and every difference becomes an event, queued for each
active webhook. Deliveries are POSTed as JSON signed with HMAC-SHA256 of the body under the
webhook's secret, and retried with back-off until they succeed or give up. ``flask webhooks run``
(from cron, every minute) retries what is due and notices expiries, which no request announces.

An address is a way into the network the server sits in, so it must be https and its host must be
public: the name is resolved and every address checked when the webhook is added, and again before
each delivery, which then connects to exactly the address that was checked (the certificate is
still verified against the name). Redirects are never followed, and a failure is recorded in
generic words, never the remote server's own text (which would make the page a network probe).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from api.models import StatusSnapshot, Webhook, WebhookDelivery
from audit.log import record
from core.db import utcnow
from people.models import Person
from training.models import Policy
from training.publishing import current_version
from training.status import statuses_for

log = logging.getLogger("countersign.webhooks")
EVENT = "training_status.changed"
BACKOFF = [timedelta(minutes=m) for m in (1, 5, 30, 120, 720)]  # then give up
TIMEOUT_SECONDS = 10


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


Resolver = Callable[[str, int], list[str]]


class AddressRefused(ValueError):
    """A webhook address Countersign will not send to; the message says why, for the form."""


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _setting(name: str, default: Any = None) -> Any:
    return current_app.config.get(name, default) if has_app_context() else default


def _resolver() -> Resolver:
    """``WEBHOOKS_RESOLVER`` lets a test stand in for DNS (as a rebinding attacker would)."""
    resolver = _setting("WEBHOOKS_RESOLVER")
    return resolver if callable(resolver) else system_resolve


def _allow_loopback() -> bool:
    value = _setting("WEBHOOKS_ALLOW_HTTP_LOOPBACK", False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), which is where it goes."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(text: str) -> str | None:
    """Why Countersign will not connect to the IP address ``text``, or None when it is public."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            return address_refusal(str(inner))
    if address.is_loopback:
        return None if _allow_loopback() else "it is this server itself (loopback)"
    if address.is_multicast:
        return "it is a multicast address"
    if address.is_link_local:
        return "it is a link-local address"
    if address.is_unspecified or address.is_reserved or not address.is_global:
        return "it is a private or reserved address, not one on the internet"
    return None


def _literal_ip(host: str) -> str | None:
    """``host`` as an IP address if it is written as one, in any form the C library accepts
    (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``), else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the name (for Host, SNI and the certificate) and a checked address."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def check_url(url: str) -> tuple[str, str, int, str]:
    """The scheme, host, port and path of an acceptable webhook address; raises AddressRefused."""
    if len(url) > 500 or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise AddressRefused("Give the full address that receives events, starting https://.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AddressRefused("That is not a web address Countersign can use.") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise AddressRefused("Give the full address that receives events, starting https://.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("Leave user names and passwords out of the address.")
    host = parts.hostname.rstrip(".")
    if parts.scheme == "http":
        literal = _literal_ip(host)
        loopback = host == "localhost" or (
            literal is not None and ipaddress.ip_address(literal).is_loopback
        )
        if not (_allow_loopback() and loopback):
            raise AddressRefused("The address must start https://, so events travel encrypted.")
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port, path


def resolve_target(url: str, resolve: Resolver | None = None) -> Target:
    """Check ``url``, resolve its host and check every address it has; connect to the first.

    Raises AddressRefused when the address is not allowed, and OSError when the name does not
    resolve.
    """
    scheme, host, port, path = check_url(url)
    literal = _literal_ip(host)
    addresses = [literal] if literal else (resolve or _resolver())(host, port)
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        reason = address_refusal(address)
        if reason:
            raise AddressRefused(
                f"Countersign does not send events to {host}: {reason}. Give an address on the "
                "internet."
            )
    return Target(scheme, host, port, path, addresses[0])


def create_webhook(session: Session, url: str, created_by_id: int | None) -> Webhook:
    """Register ``url``; raises AddressRefused (a ValueError) with the reason when it is not allowed.

    A name that does not resolve yet is accepted: every delivery resolves and checks it again.
    """
    url = url.strip()
    try:
        resolve_target(url)
    except OSError:
        pass
    webhook = Webhook(url=url, secret=secrets.token_urlsafe(32), created_by_id=created_by_id)
    session.add(webhook)
    session.flush()
    record(session, "webhook.added", actor_id=created_by_id, subject_type="webhook",
           subject_id=webhook.id)  # fmt: skip
    return webhook


def stop_webhook(session: Session, webhook: Webhook, stopped_by_id: int | None) -> None:
    if webhook.active:
        webhook.active = False
        session.flush()
        record(session, "webhook.stopped", actor_id=stopped_by_id, subject_type="webhook",
               subject_id=webhook.id)  # fmt: skip


def detect_changes(
    session: Session, person_ids: list[int] | None, now: datetime | None = None
) -> int:
    """Compare statuses with the last announced ones; queue an event for each change."""
    now = now or utcnow()
    hooks = session.scalars(select(Webhook).where(Webhook.active.is_(True))).all()
    query = select(Person).options(selectinload(Person.role_rows))
    if person_ids is not None:
        query = query.where(Person.id.in_(person_ids))
    people = session.scalars(query).all()
    queued = 0
    for policy in session.scalars(select(Policy)):
        version = current_version(session, policy, now.date())
        if version is None or not people:
            continue
        statuses = statuses_for(session, list(people), policy, now)
        known = {
            s.person_id: s
            for s in session.scalars(
                select(StatusSnapshot).where(
                    StatusSnapshot.policy_id == policy.id,
                    StatusSnapshot.person_id.in_([p.id for p in people]),
                )
            )
        }
        for person in people:
            status = statuses[person.id]
            snapshot = known.get(person.id)
            if snapshot is not None and snapshot.trained == status.trained:
                continue
            if snapshot is None:
                session.add(
                    StatusSnapshot(
                        person_id=person.id, policy_id=policy.id, trained=status.trained, at=now
                    )
                )
                if not status.trained:
                    continue  # someone new and untrained: nothing has changed yet
            else:
                snapshot.trained, snapshot.at = status.trained, now
            payload = {
                "id": str(uuid.uuid4()),
                "type": EVENT,
                "occurred_at": now.isoformat().replace("+00:00", "Z"),
                "data": {
                    "person": {"id": person.id, "email": person.email, "name": person.name},
                    "policy": {"slug": policy.slug, "version": status.version},
                    "trained": status.trained,
                    "valid_until": status.valid_until.isoformat().replace("+00:00", "Z")
                    if status.valid_until
                    else None,
                    "missing": [{"module": m.module, "reason": m.reason} for m in status.missing],
                },
            }
            for hook in hooks:
                session.add(
                    WebhookDelivery(
                        webhook_id=hook.id,
                        event_id=payload["id"],
                        payload=payload,
                        created_at=now,
                        next_attempt_at=now,
                        attempts=0,
                    )  # fmt: skip
                )
                queued += 1
    session.flush()
    return queued


def deliver_due(session: Session, now: datetime | None = None, limit: int = 100) -> int:
    """Attempt every delivery that is due; returns how many succeeded."""
    now = now or utcnow()
    due = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.delivered_at.is_(None),
            WebhookDelivery.gave_up_at.is_(None),
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.id)
        .limit(limit)
    ).all()
    ok = 0
    for delivery in due:
        ok += _attempt(session, delivery, now)
        session.commit()
    return ok


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever the name resolves to by now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS: SNI and the certificate check use the name, not the address."""

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _post(target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``target``; the response status. http.client follows no redirects."""
    if target.scheme == "https":
        context = ssl.create_default_context(cafile=_setting("WEBHOOKS_CA_FILE") or None)
        connection: http.client.HTTPConnection = _PinnedHTTPSConnection(
            target, TIMEOUT_SECONDS, context
        )
    else:
        connection = _PinnedHTTPConnection(target, TIMEOUT_SECONDS)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)  # the answer's body is not ours to keep
        return response.status
    finally:
        connection.close()


def _attempt(session: Session, delivery: WebhookDelivery, now: datetime) -> bool:
    hook = session.get(Webhook, delivery.webhook_id)
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Countersign-Webhooks/1",
        "X-Countersign-Event": delivery.payload["type"],
        "X-Countersign-Delivery": str(delivery.id),
        "X-Countersign-Signature": sign(hook.secret, body),
    }
    delivery.attempts += 1
    delivery.last_attempt_at = now
    status: int | None = None
    try:
        target = resolve_target(hook.url)  # again: what the name points at may have changed
        status = _post(target, body, headers)
    except AddressRefused:
        error = "not sent: the address is not on the internet"
    except ssl.SSLError:
        error = "could not connect securely (certificate not accepted)"
    except (OSError, http.client.HTTPException):
        error = "could not connect"
    else:
        if 200 <= status < 300:
            delivery.last_status, delivery.delivered_at, delivery.last_error = status, now, None
            return True
        error = f"the receiving server answered {status}"
        if 300 <= status < 400:
            error += " (a redirect, which is not followed)"
    delivery.last_status, delivery.last_error = status, error
    if delivery.attempts > len(BACKOFF):
        delivery.gave_up_at = now
    else:
        delivery.next_attempt_at = now + BACKOFF[delivery.attempts - 1]
    return False


def init_app(app: Flask) -> None:
    """Listen for status changes; queue events and make the first delivery attempt at once."""
    from core.db import db
    from core.events import status_may_change

    def on_change(sender: Flask, person_ids: list[int] | None, **_: Any) -> None:
        if sender is not app:
            return
        session = db.session
        if not session.scalar(select(Webhook.id).where(Webhook.active.is_(True)).limit(1)):
            return
        from core.db import writing

        with writing(session):
            queued = detect_changes(session, person_ids)
        if queued and not app.config.get("WEBHOOKS_SYNC"):
            threading.Thread(target=_deliver_in_background, args=(app,), daemon=True).start()
        elif queued:
            deliver_due(session)

    status_may_change.connect(on_change, weak=False)


def _deliver_in_background(app: Flask) -> None:
    from core.db import db

    with app.app_context():
        try:
            deliver_due(db.session)
        except Exception:  # a failed delivery is retried by `flask webhooks run`
            log.exception("webhook delivery failed")
