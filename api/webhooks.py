"""Webhooks: tell other systems when someone's trained status changes.

Each ``status.changed`` event (:mod:`training.status_store`) in which someone became trained or
stopped being trained becomes one delivery per active webhook, in the outbox. The worker POSTs each
as JSON signed with HMAC-SHA256 of the body under the webhook's secret, and retries with back-off
until it succeeds or gives up (:mod:`core.outbox`). Expiries are noticed by the worker's sweep,
so they are announced too.

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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Webhook
from audit.log import record
from core.outbox import GiveUp, OutboxMessage, Retry, enqueue, subscribe, topic
from people.models import Person
from training.models import StoredStatus
from training.status_store import STATUS_CHANGED

log = logging.getLogger("countersign.webhooks")
EVENT = "training_status.changed"
BACKOFF = tuple(timedelta(minutes=m) for m in (1, 5, 30, 120, 720))  # then give up
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


DELIVERY = "webhook"


def on_status_changed(session: Session, message: OutboxMessage) -> None:
    """A ``status.changed`` event: when someone became trained or stopped being trained, queue
    one delivery for each active webhook. A first answer (``old`` is None: someone new, or the store
    filling after an upgrade) changes nothing anyone was told."""
    change = message.payload
    old, new = change["old"], change["new"]
    if old is None or old["trained"] == new["trained"]:
        return
    hooks = session.scalars(select(Webhook.id).where(Webhook.active.is_(True))).all()
    if not hooks:
        return
    person = session.get(Person, change["person_id"])
    if person is None:
        return
    status = session.scalar(
        select(StoredStatus).where(
            StoredStatus.person_id == person.id, StoredStatus.policy_id == change["policy_id"]
        )
    )
    event = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"countersign:{message.key or message.id}")),
        "type": EVENT,
        "occurred_at": change["at"].replace("+00:00", "Z"),
        "data": {
            "person": {"id": person.id, "email": person.email, "name": person.name},
            "policy": {"slug": change["policy"], "version": new["version"]},
            "trained": new["trained"],
            "valid_until": new["valid_until"].replace("+00:00", "Z")
            if new["valid_until"]
            else None,
            "missing": list(status.missing) if status is not None else [],
        },
    }
    for hook_id in hooks:
        enqueue(session, DELIVERY, {"webhook_id": hook_id, "event": event},
                key=f"{DELIVERY}:{hook_id}:{event['id']}", person_id=person.id)  # fmt: skip


def deliver(session: Session, message: OutboxMessage) -> int:
    """POST one event to one webhook (the worker records the outcome and retries)."""
    hook = session.get(Webhook, message.payload["webhook_id"])
    if hook is None or not hook.active:
        raise GiveUp("not sent: the webhook was stopped")
    event = message.payload["event"]
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Countersign-Webhooks/1",
        "X-Countersign-Event": event["type"],
        "X-Countersign-Delivery": str(message.id),
        "X-Countersign-Signature": sign(hook.secret, body),
    }
    session.commit()  # nothing held open while the receiver answers
    try:
        target = resolve_target(hook.url)  # again: what the name points at may have changed
        status = _post(target, body, headers)
    except AddressRefused:
        raise Retry("not sent: the address is not on the internet")
    except ssl.SSLError:
        raise Retry("could not connect securely (certificate not accepted)")
    except (OSError, http.client.HTTPException):
        raise Retry("could not connect")
    if 200 <= status < 300:
        return status
    error = f"the receiving server answered {status}"
    if 300 <= status < 400:
        error += " (a redirect, which is not followed)"
    raise Retry(error, status)


def deliveries(session: Session, limit: int = 50) -> list[OutboxMessage]:
    """The latest deliveries, newest first, for the administrators' page."""
    return list(
        session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.topic == DELIVERY)
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
    )


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


def init_app(app: Flask) -> None:
    """Deliveries are the worker's: one per webhook for each change of someone's trained status."""
    topic(app, DELIVERY, deliver, remote=True, backoff=BACKOFF)
    subscribe(app, STATUS_CHANGED, on_status_changed)
