"""A learning platform for the tests: its own RSA key pair signing real LTI 1.3 id_tokens, and a
real HTTP server on 127.0.0.1 serving its key set, an OAuth 2 token endpoint (which checks the
tool's signed client assertion against the tool's published keys) and Assignment and Grade
Services line items that record the scores posted to them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto.jwk import JWK
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.serving import QUICK_STOP

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
LINEITEM_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
ROLE = "http://purl.imsglobal.org/vocab/lis/v2/membership#"


def new_key() -> tuple[str, dict[str, Any]]:
    """A private key (PEM) and its public JWK with a kid."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    jwk = JWK.from_pem(pem.encode())
    public = json.loads(jwk.export_public())
    public.update(kid=jwk.thumbprint(), alg="RS256", use="sig")
    return pem, public


_TOOL_KEY: list[str] = []


def give_tool_key(instance: Path) -> None:
    """The tool's key made in ``instance`` as on first use, but made once per test process and
    copied: a 3072-bit key takes a fifth of a second or more to make, in every test that launches.
    (Making it on first use is tested where the instance folder is checked.)"""
    from lti.keys import _generate

    target = instance / "lti_private_key.pem"
    if target.exists():
        return
    if not _TOOL_KEY:
        _TOOL_KEY.append(_generate(target))  # made as the app makes it, the first time
        return
    instance.mkdir(parents=True, exist_ok=True)
    target.write_text(_TOOL_KEY[0])
    target.chmod(0o600)


@dataclass
class Score:
    lineitem: str
    body: dict[str, Any]
    token: str


@dataclass
class TestPlatform:
    """Call :meth:`start` to serve; ``url`` is then its base address on 127.0.0.1."""

    __test__ = False  # not a test class, whatever its name

    client_id: str = "countersign-client"
    deployment_id: str = "deployment-1"
    tool_jwks_url: str = ""  # where the tool publishes its public keys
    tool_jwks: Any = None  # or a callable returning them (the tool's JWKS endpoint)
    url: str = ""
    scores: list[Score] = field(default_factory=list)
    lineitems: list[dict[str, Any]] = field(default_factory=list)
    tokens_issued: int = 0
    fail_scores: int = 0  # answer this many score posts with 503 before accepting
    token_answer: Any = None  # when set, what the token endpoint answers instead of a token
    _server: Any = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.rotate_key()

    def rotate_key(self) -> None:
        """A new key pair, served from then on (the old one is gone from the key set)."""
        self.private_pem, self.public_jwk = new_key()
        # Loaded once: loading an RSA key checks it, which takes tens of milliseconds.
        self.private_key = serialization.load_pem_private_key(self.private_pem.encode(), None)

    # --- the HTTP side ----------------------------------------------------------------------

    def start(self) -> TestPlatform:
        from lti import launch

        # The tool keeps platforms' key sets by address for a while, and a port is soon reused:
        # a new platform must not meet the keys an earlier one served from the same address.
        launch._key_sets.clear()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(QUICK_STOP,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def lineitems_url(self) -> str:
        return f"{self.url}/courses/7/lineitems"

    @property
    def lineitem_url(self) -> str:
        return f"{self.url}/courses/7/lineitems/42"

    def _wsgi(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self._route(request)
        except Exception as exc:  # shown to the test as a 500 with the reason
            response = Response(f"test platform error: {exc!r}", status=500)
        return response(environ, start_response)

    def _json(self, data: Any, status: int = 200, content_type: str = "application/json") -> Any:
        return Response(json.dumps(data), status=status, content_type=content_type)

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/jwks":
            return self._json({"keys": [self.public_jwk]})
        if path == "/token" and request.method == "POST":
            return self._token(request)
        if not self._authorised(request):
            return self._json({"error": "invalid_token"}, 401)
        if path == "/courses/7/lineitems" and request.method == "GET":
            return self._json(
                self.lineitems, content_type="application/vnd.ims.lis.v2.lineitemcontainer+json"
            )
        if path == "/courses/7/lineitems" and request.method == "POST":
            item = json.loads(request.get_data(as_text=True))
            item["id"] = f"{self.lineitems_url}/{100 + len(self.lineitems)}"
            self.lineitems.append(item)
            return self._json(item, 201, "application/vnd.ims.lis.v2.lineitem+json")
        if path.startswith("/courses/7/lineitems/") and path.endswith("/scores"):
            if request.content_type != "application/vnd.ims.lis.v1.score+json":
                return self._json({"error": "wrong content type"}, 415)
            if self.fail_scores > 0:
                self.fail_scores -= 1
                return self._json({"error": "gradebook unavailable"}, 503)
            token = request.headers["Authorization"].removeprefix("Bearer ")
            lineitem = f"{self.url}{path.removesuffix('/scores')}"
            self.scores.append(Score(lineitem, json.loads(request.get_data(as_text=True)), token))
            return Response("", status=204)
        return self._json({"error": "not found"}, 404)

    def _token(self, request: Request) -> Response:
        """client_credentials with a JWT assertion signed by the tool (RFC 7523), checked."""
        if self.token_answer is not None:
            return self._json(self.token_answer)
        form = request.form
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return self._json({"error": "unsupported_grant_type"}, 400)
        keys = self.tool_jwks() if callable(self.tool_jwks) else self.tool_jwks
        assertion = form.get("client_assertion", "")
        kid = jwt.get_unverified_header(assertion).get("kid")
        key = next((k for k in keys["keys"] if k.get("kid") == kid), None)
        if key is None:
            return self._json({"error": "invalid_client", "detail": "unknown kid"}, 401)
        try:
            claims = jwt.decode(
                assertion, jwt.PyJWK(key).key, algorithms=["RS256"],
                audience=f"{self.url}/token", issuer=self.client_id,
            )  # fmt: skip
        except jwt.InvalidTokenError as exc:
            return self._json({"error": "invalid_client", "detail": str(exc)}, 401)
        if claims.get("sub") != self.client_id:
            return self._json({"error": "invalid_client"}, 401)
        self.tokens_issued += 1
        token = f"access-{secrets.token_hex(8)}"
        self._granted = {**getattr(self, "_granted", {}), token: form.get("scope", "").split()}
        return self._json({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in getattr(self, "_granted", {})

    # --- the browser side: what the platform's pages would do --------------------------------

    def registration(self) -> dict[str, Any]:
        """What an administrator copies into Countersign's registration form."""
        return {
            "name": "Test Moodle",
            "issuer": self.issuer,
            "client_id": self.client_id,
            "auth_login_url": f"{self.url}/auth",
            "auth_token_url": f"{self.url}/token",
            "key_set_url": f"{self.url}/jwks",
            "deployment_ids": self.deployment_id,
        }

    def claims(self, nonce: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": "moodle-user-17",
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "email": "tessa.ta@ladysmith.example",
            "name": "Tessa Assistant",
            "given_name": "Tessa",
            "family_name": "Assistant",
            LTI + "message_type": "LtiResourceLinkRequest",
            LTI + "version": "1.3.0",
            LTI + "deployment_id": self.deployment_id,
            LTI + "target_link_uri": "http://countersign.test/lti/launch",
            LTI + "resource_link": {"id": "resource-9", "title": "Social media policy training"},
            LTI + "context": {"id": "course-7", "title": "Staff induction"},
            LTI + "roles": [ROLE + "Learner"],
            AGS: {
                "scope": [SCORE_SCOPE, LINEITEM_SCOPE],
                "lineitem": self.lineitem_url,
                "lineitems": self.lineitems_url,
            },
        }
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def sign(
        self, claims: dict[str, Any], key_pem: str | None = None, kid: str | None = None
    ) -> str:
        return jwt.encode(
            claims, key_pem or self.private_key, algorithm="RS256",
            headers={"kid": kid or self.public_jwk["kid"]},
        )  # fmt: skip

    def login(self, client: Any, **params: str) -> dict[str, str]:
        """Start a login as the platform does; returns the parameters of the auth redirect."""
        query = {
            "iss": self.issuer, "login_hint": "17", "target_link_uri": "http://countersign.test/",
            "client_id": self.client_id, "lti_deployment_id": self.deployment_id, **params,
        }  # fmt: skip
        response = client.post("/lti/login", data=query)
        assert response.status_code == 302, response.get_data(as_text=True)
        location = urlsplit(response.location)
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{self.url}/auth"
        return {k: v[0] for k, v in parse_qs(location.query).items()}

    def launch(
        self,
        client: Any,
        sign: Any = None,
        state: str | None = None,
        token: str | None = None,
        **overrides: Any,
    ) -> tuple[Any, dict[str, str], str]:
        """A full launch: login, then the id_token posted back. Returns (response, auth, token)."""
        auth = self.login(client)
        claims = self.claims(auth["nonce"], **overrides)
        id_token = token or (sign(claims) if sign else self.sign(claims))
        response = client.post(
            auth["redirect_uri"].removeprefix("http://countersign.test"),
            data={"id_token": id_token, "state": state or auth["state"]},
        )
        return response, auth, id_token


def new_subject() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"
