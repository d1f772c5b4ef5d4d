"""The tool's own key pair: it signs the service-token requests sent to platforms, and platforms
read its public half from the JWKS URL.

The private key is configured (``COUNTERSIGN_LTI_PRIVATE_KEY_FILE``, a PEM file) or made on first
use in the instance folder, never kept in the database or the repository.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app
from jwcrypto.jwk import JWK

log = logging.getLogger("countersign.lti")
# 3072-bit RSA gives about 128-bit security (NIST SP 800-57); 2048-bit about 112.
KEY_BITS = 3072


def _path() -> Path:
    configured = current_app.config.get("LTI_PRIVATE_KEY_FILE")
    return (
        Path(configured) if configured else Path(current_app.instance_path) / "lti_private_key.pem"
    )


def private_key_pem() -> str:
    cached = current_app.extensions.get("countersign.lti_key")
    if cached:
        return cached
    path = _path()
    try:
        pem = path.read_text()
    except FileNotFoundError:
        pem = _generate(path)
    current_app.extensions["countersign.lti_key"] = pem
    return pem


def _generate(path: Path) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: a worker starting at the same
    # moment either makes the link first or reads a complete key, never half of one.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".lti_key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        os.link(temporary, path)
    except FileExistsError:  # another worker made it first
        return path.read_text()
    finally:
        os.unlink(temporary)
    return pem


def public_key_pem() -> str:
    """The public half, worked out once per process (loading an RSA key checks it, slowly)."""
    cached = current_app.extensions.get("countersign.lti_public_key")
    if cached:
        return cached
    key = serialization.load_pem_private_key(private_key_pem().encode(), password=None)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < KEY_BITS:
        log.warning(
            "The LTI key %s is %d-bit RSA, weaker than the %d bits new installations get. Move it "
            "aside and restart: a new key is made, and platforms read it from the JWKS URL.",
            _path().name, key.key_size, KEY_BITS,
        )  # fmt: skip
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    current_app.extensions["countersign.lti_public_key"] = pem
    return pem


def public_jwk() -> dict[str, Any]:
    """The public key as a JWK, its ``kid`` the RFC 7638 thumbprint (stable for the key)."""
    jwk = JWK.from_pem(public_key_pem().encode())
    data = json.loads(jwk.export_public())
    data.update(kid=jwk.thumbprint(), alg="RS256", use="sig")
    return data


def jwks() -> dict[str, list[dict[str, Any]]]:
    return {"keys": [public_jwk()]}
