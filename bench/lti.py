"""Benchmark: what an LTI 1.3 launch costs the tool.

A launch is two requests: the OIDC login (a state and nonce stored, a redirect) and the signed
launch (the id_token's signature and claims checked, state and nonce used up, the person found, a
grade link and an audit entry written, a session started). Measured through the app's test client
on SQLite for 200 launches of the same person, against two floors measured in the same run: the
bare RS256 verification of the same kind of token (PyJWT alone), and a bare Flask endpoint.
The platform's key set is pasted into its registration, so nothing is fetched over the network.
Builds its database in a temporary directory, talks to nothing, stops by itself.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAUNCHES = int(__import__("os").environ.get("LAUNCHES", "200"))


def main() -> None:
    import jwt
    from flask import Flask

    from app import create_app
    from core.db import db
    from core.migrate import upgrade
    from lti.models import LtiDeployment, LtiPlatform
    from tests.lti_platform import TestPlatform
    from training.cli import publish_all

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-lti-"))
    try:
        app = create_app({
            "DATABASE_URL": f"sqlite:///{workdir / 'lti.db'}", "SECRET_KEY": "b",
            "SERVER_NAME": "countersign.test", "BASE_URL": "http://countersign.test",
        })  # fmt: skip
        app.instance_path = str(workdir)
        platform = TestPlatform()  # never started: its keys sign, nothing is served
        platform.url = "https://lms.example"
        with app.app_context():
            upgrade()
            publish_all()
            db.session.add(LtiPlatform(
                name="Bench", issuer=platform.issuer, client_id=platform.client_id,
                auth_login_url=f"{platform.url}/auth", auth_token_url=f"{platform.url}/token",
                key_set={"keys": [platform.public_jwk]}, role_map={"Learner": "staff"},
                deployments=[LtiDeployment(deployment_id=platform.deployment_id)],
            ))  # fmt: skip
            db.session.commit()
        client = app.test_client()
        for _ in range(5):  # warm up: first requests load templates, keys and mappers
            platform.launch(
                client, **{"https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": None}
            )

        started = time.perf_counter()
        for _ in range(LAUNCHES):
            response, _, _ = platform.launch(
                client, **{"https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": None}
            )
            assert response.status_code == 302, response.get_data(as_text=True)
        launch = (time.perf_counter() - started) / LAUNCHES

        token = platform.sign(platform.claims("n"))
        public = jwt.PyJWK(platform.public_jwk).key
        started = time.perf_counter()
        for _ in range(LAUNCHES):
            jwt.decode(token, public, algorithms=["RS256"], audience=platform.client_id)
        verify = (time.perf_counter() - started) / LAUNCHES

        bare = Flask("bare")
        bare.add_url_rule("/", "hello", lambda: "hello")
        bare_client = bare.test_client()
        started = time.perf_counter()
        for _ in range(LAUNCHES):
            bare_client.get("/")
        endpoint = (time.perf_counter() - started) / LAUNCHES

        print(f"LTI launch (login + launch), {LAUNCHES} on SQLite: {launch * 1000:.1f} ms each")
        print(f"  floor: RS256 verification alone {verify * 1000:.2f} ms "
              f"({launch / verify:.0f}x); a bare Flask request {endpoint * 1000:.2f} ms "
              f"({launch / endpoint:.0f}x)")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
