"""A small SMTP server on 127.0.0.1 that keeps what it receives, for tests of email sending.

Given a server-side ``ssl.SSLContext`` it offers STARTTLS, or speaks TLS from the first byte
(``implicit=True``, as on port 465). It accepts any AUTH and keeps what it was sent in ``auth``, so a
test can show that no credentials reached a server the client should not have trusted.
"""

from __future__ import annotations

import datetime
import ipaddress
import socketserver
import ssl
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path

from tests.serving import QUICK_STOP


class _Handler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        self.tls = False
        if self.server.implicit:  # type: ignore[attr-defined]
            try:
                self.request = self.server.context.wrap_socket(self.request, server_side=True)  # type: ignore[attr-defined]
            except (ssl.SSLError, OSError):
                self.request = None
                return
            self.tls = True
        super().setup()

    def finish(self) -> None:
        if self.request is None:
            return
        super().finish()
        if self.tls:  # the server closes only the plain socket it accepted
            self.request.close()

    def handle(self) -> None:
        if self.request is None:
            return
        self.wfile.write(b"220 localhost test SMTP\r\n")
        recipients: list[str] = []
        server = self.server
        while line := self.rfile.readline():
            command = line.decode("ascii", "replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                offers = [b"localhost"]
                if server.context is not None and not self.tls:  # type: ignore[attr-defined]
                    offers.append(b"STARTTLS")
                offers.append(b"AUTH PLAIN LOGIN")
                lines = [b"250-" + o for o in offers[:-1]] + [b"250 " + offers[-1]]
                self.wfile.write(b"\r\n".join(lines) + b"\r\n")
            elif verb == "STARTTLS":
                self.wfile.write(b"220 Ready to start TLS\r\n")
                self.wfile.flush()
                try:
                    self.request = server.context.wrap_socket(self.request, server_side=True)  # type: ignore[attr-defined]
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate
                self.tls = True
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb", buffering=0)
            elif verb == "AUTH":
                server.auth.append(command)  # type: ignore[attr-defined]
                self.wfile.write(b"235 Authentication successful\r\n")
            elif verb == "MAIL":
                recipients = []
                self.wfile.write(b"250 OK\r\n")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip(" <>"))
                self.wfile.write(b"250 OK\r\n")
            elif verb == "DATA":
                self.wfile.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                body = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                server.received.append((recipients, message_from_bytes(body)))  # type: ignore[attr-defined]
                self.wfile.write(b"250 OK queued\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 Bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


class SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, context: ssl.SSLContext | None = None, implicit: bool = False, host: str = "127.0.0.1"
    ) -> None:
        super().__init__((host, 0), _Handler)
        self.context, self.implicit = context, implicit
        self.received: list[tuple[list[str], Message]] = []
        self.auth: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(QUICK_STOP,), daemon=True)

    def __enter__(self) -> SMTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


@dataclass(frozen=True)
class MadeCA:
    """A certificate authority made for one test, and a server certificate it signed."""

    ca_file: Path
    server_context: ssl.SSLContext


def make_ca(
    directory: Path,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    self_signed: bool = False,
) -> MadeCA:
    """A CA and a leaf certificate for ``names`` (host names or IP addresses), written under
    ``directory``; the leaf's context is ready for :class:`SMTPServer`. With ``self_signed`` the
    leaf signs itself, as an impostor's server would."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Countersign test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    signer = key if self_signed else ca_key
    cert = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(leaf_name if self_signed else ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file)
    return MadeCA(ca_file, context)
