"""The "is trained" API: authentication, status through the API, errors, and the OpenAPI contract."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from sqlalchemy import event, select, text

from api.models import ApiToken
from api.openapi import document
from api.tokens import create_token
from core.db import Reader, db, utcnow
from people.models import Person
from people.service import deactivate
from tests.conftest import examples, train_people

pytestmark = pytest.mark.usefixtures("published")
SCHEMA = schemathesis.openapi.from_dict(document())
STATUS_OP = SCHEMA["/api/v1/people/{ref}/training-status"]["GET"]
CHECK_OP = SCHEMA["/api/v1/training-status/check"]["POST"]


@pytest.fixture
def token(app) -> str:
    with app.app_context():
        new = create_token(db.session, "Approvals workflow", ["training:read"])
        db.session.commit()
        return new.secret


@pytest.fixture
def api(client, token):
    class Api:
        headers = {"Authorization": f"Bearer {token}"}

        def get(self, url, **kw):
            return client.get(url, headers=self.headers, **kw)

        def post(self, url, **kw):
            return client.post(url, headers=self.headers, **kw)

    return Api()


def test_status_of_a_new_person_lists_every_reason(api, make_person):
    pid = make_person("volunteer", name="Val Vol", email="val@ladysmith.example")
    response = api.get(f"/api/v1/people/{pid}/training-status")
    assert response.status_code == 200
    STATUS_OP.validate_response(response)
    body = response.get_json()
    assert body["person"] == {"id": pid, "name": "Val Vol", "email": "val@ladysmith.example",
                              "roles": ["volunteer"], "active": True}  # fmt: skip
    assert body["policy"] == {"slug": "social-media-policy", "version": "1.0"}
    assert body["trained"] is False and body["valid_until"] is None
    assert len(body["modules"]) == 10
    assert body["missing"][0] == {"module": "scope", "reason": "not_started"}
    assert body["missing"][-1] == {"module": None, "reason": "not_acknowledged"}


def test_status_by_email_once_trained(app, api, make_person):
    pid = make_person("volunteer", name="Val Vol", email="val@ladysmith.example")
    train_people(app, pid)
    response = api.get(
        "/api/v1/people/VAL@ladysmith.example/training-status?policy=social-media-policy"
    )
    STATUS_OP.validate_response(response)
    body = response.get_json()
    assert body["trained"] is True and body["missing"] == []
    assert body["valid_until"].endswith("Z")
    assert {m["status"] for m in body["modules"]} == {"completed"}


def test_a_deactivated_person_is_reported_untrained(app, api, make_person):
    pid = make_person("volunteer", name="Val Vol")
    train_people(app, pid)
    with app.app_context():
        deactivate(db.session.get(Person, pid))
        db.session.commit()
    body = api.get(f"/api/v1/people/{pid}/training-status").get_json()
    assert body["trained"] is False and body["person"]["active"] is False


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/api/v1/people/999999/training-status", 404, "person_not_found"),
        ("/api/v1/people/nobody@x.example/training-status", 404, "person_not_found"),
        ("/api/v1/people/1/training-status?policy=nope", 404, "policy_not_found"),
        ("/api/v1/people/1/training-status?colour=red", 400, "unknown_parameter"),
        ("/api/v1/people/99999999999999999999/training-status", 404, "person_not_found"),
        ("/api/v1/nothing-here", 404, "not_found"),
        ("/api/nothing-here", 404, "not_found"),
    ],
)
def test_errors_are_json_with_a_code_and_message(api, url, status, code):
    response = api.get(url)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["message"]


def test_wrong_method_is_json_405(api):
    response = api.post("/api/v1/people/1/training-status")
    assert (
        response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"
    )


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer cs_not-a-real-token",
        "Bearer " + "x" * 500,
    ],
)
def test_requests_without_a_valid_token_are_401(client, make_person, header):
    pid = make_person("staff")
    headers = {"Authorization": header} if header is not None else {}
    response = client.get(f"/api/v1/people/{pid}/training-status", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    STATUS_OP.validate_response(response)


def test_a_revoked_token_is_refused_and_a_token_without_the_scope_is_403(app, client, api, token):
    with app.app_context():
        other = create_token(db.session, "Other", ["training:read"])
        other.token.scopes = ["reports:read"]
        db.session.commit()
    response = client.get("/api/v1/people/1/training-status",
                          headers={"Authorization": f"Bearer {other.secret}"})  # fmt: skip
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert api.get("/api/v1/people/1/training-status").status_code in (200, 404)
    with app.app_context():
        db.session.scalar(
            select(ApiToken).where(ApiToken.name == "Approvals workflow")
        ).revoked_at = utcnow()
        db.session.commit()
    assert api.get("/api/v1/people/1/training-status").status_code == 401


def test_token_use_is_recorded(app, api, make_person):
    pid = make_person("staff")
    api.get(f"/api/v1/people/{pid}/training-status")
    with app.app_context():
        token = db.session.scalar(select(ApiToken))
        assert token.last_used_at is not None and token.token_hash != ""


def test_tokens_command_prints_the_token_once_and_stores_a_hash(app, runner):
    result = runner.invoke(args=["tokens", "create", "--name", "MIS", "--scope", "training:read"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert secret.startswith("cs_") and len(secret) >= 40
    with app.app_context():
        token = db.session.scalar(select(ApiToken))
        assert secret not in (token.token_hash, token.prefix)
    listed = runner.invoke(args=["tokens", "list"])
    assert "MIS" in listed.output and secret not in listed.output
    assert runner.invoke(args=["tokens", "revoke", str(token.id)]).exit_code == 0
    assert "revoked" in runner.invoke(args=["tokens", "list"]).output


def test_administrators_create_and_revoke_tokens_on_a_page(app, auth, make_person):
    auth.as_person(make_person("admin"))
    response = auth.post("/admin/tokens/", {"name": "Approvals", "scopes": ["training:read"]})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "Copy the new token now" in page
    secret = page.split('<code class="copyable">')[1].split("<")[0]
    assert app.test_client().get(
        "/api/v1/people/1/training-status", headers={"Authorization": f"Bearer {secret}"}
    ).status_code in (200, 404)
    with app.app_context():
        token_id = db.session.scalar(select(ApiToken.id))
    auth.post(f"/admin/tokens/{token_id}/revoke", form_url="/admin/tokens/")
    assert (
        app.test_client()
        .get("/api/v1/people/1/training-status", headers={"Authorization": f"Bearer {secret}"})
        .status_code
        == 401
    )
    assert "Copy the new token now" not in auth.client.get("/admin/tokens/").get_data(as_text=True)


def test_a_token_stops_working_on_its_expiry_date_and_says_so(app, client, make_person):
    pid = make_person("staff")
    with app.app_context():
        made = utcnow() - timedelta(days=30, seconds=1)
        secret = create_token(db.session, "MIS", ["training:read"], days=30, now=made).secret
        live = create_token(db.session, "Rota", ["training:status"], days=30).secret
        db.session.commit()
    url = f"/api/v1/people/{pid}/training-status"
    response = client.get(url, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "token_expired"
    assert f"expired on {(made + timedelta(days=30)):%Y-%m-%d}" in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    STATUS_OP.validate_response(response)
    assert client.get(url, headers={"Authorization": f"Bearer {live}"}).status_code == 200


@pytest.mark.parametrize("days", [0, 366, -1, True, "30"])
def test_a_token_lives_one_day_to_one_year(app, days):
    from api.tokens import TokenError

    with app.app_context(), pytest.raises(TokenError, match="from 1 to 365 days"):
        create_token(db.session, "MIS", ["training:read"], days=days)


def test_the_tokens_page_shows_expiry_warns_a_month_ahead_and_marks_expired(app, auth, make_person):
    auth.as_person(make_person("admin"))
    response = auth.post(
        "/admin/tokens/", {"name": "Door system", "scopes": ["training:status"], "days": "90"}
    )
    assert response.status_code == 200
    with app.app_context():
        token = db.session.scalar(select(ApiToken))
        assert (token.expires_at - token.created_at) == timedelta(days=90)
        create_token(db.session, "Soon", ["training:status"], days=30)
        create_token(db.session, "Gone", ["training:status"], days=1,
                     now=utcnow() - timedelta(days=2))  # fmt: skip
        db.session.commit()
    page = auth.client.get("/admin/tokens/").get_data(as_text=True)
    rows = {r.split("</td>")[0].split(">")[-1]: r for r in page.split('<td data-label="Name">')[1:]}
    assert "expires soon" in rows["Soon"] and "expires soon" not in rows["Door system"]
    assert "Expired" in rows["Gone"] and "Revoke" not in rows["Gone"]
    bad = auth.post("/admin/tokens/", {"name": "X", "scopes": ["training:status"], "days": "999"})
    assert bad.status_code == 400 and "Not a valid choice" in bad.get_data(as_text=True)


def test_tokens_made_before_expiry_existed_expire_a_year_after_the_upgrade(tmp_path):
    from sqlalchemy import text

    from app import create_app
    from core.migrate import upgrade

    app = create_app({"TESTING": True, "SECRET_KEY": "x" * 32, "MFA_ROLES": "",
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}"})  # fmt: skip
    app.instance_path = str(tmp_path / "instance")
    with app.app_context():
        upgrade("0018")
        db.session.execute(text(
            "INSERT INTO api_token (name, token_hash, prefix, scopes, created_at) "
            "VALUES ('Old', :h, 'cs_old', '[\"training:read\"]', '2024-01-01 00:00:00.000000')"
        ), {"h": "0" * 64})  # fmt: skip
        db.session.commit()
        upgrade()
        expires = db.session.scalar(select(ApiToken.expires_at))
    assert abs((expires - (utcnow() + timedelta(days=365))).total_seconds()) < 300


def test_the_tokens_command_takes_a_lifetime_and_lists_expiry(app, runner):
    made = runner.invoke(
        args=["tokens", "create", "--name", "HR", "--scope", "training:read", "--days", "90"]
    )
    assert made.exit_code == 0, made.output
    until = (utcnow() + timedelta(days=90)).strftime("%Y-%m-%d")
    assert f"expires {until}" in made.output
    assert f"active until {until}" in runner.invoke(args=["tokens", "list"]).output
    refused = runner.invoke(
        args=["tokens", "create", "--name", "HR", "--scope", "training:read", "--days", "400"]
    )
    assert refused.exit_code == 2 and "400 is not in the range" in refused.output


# --- the batch check ---------------------------------------------------------------------------


def test_check_answers_in_the_order_asked_with_not_found_entries(app, api, make_person):
    trained = make_person("volunteer", name="Tess Trained", email="tess@ladysmith.example")
    untrained = make_person("volunteer", name="Una Untrained")
    train_people(app, trained)
    refs = [untrained, "TESS@ladysmith.example", "ghost@x.example", 424242]
    response = api.post("/api/v1/training-status/check", json={"people": refs})
    CHECK_OP.validate_response(response)
    body = response.get_json()
    assert body["all_trained"] is False
    assert [r.get("trained") for r in body["results"]] == [False, True, None, None]
    assert body["results"][2] == {"ref": "ghost@x.example", "error": "not_found"}
    assert body["results"][3] == {"ref": 424242, "error": "not_found"}
    only = api.post("/api/v1/training-status/check", json={"people": [trained]}).get_json()
    assert only["all_trained"] is True


def test_check_echoes_a_ref_that_utf8_cannot_carry_and_names_in_any_script(api, make_person):
    """JSON may carry a lone surrogate in a string: a ref holding one matches nobody and is echoed
    back escaped, never a 500; names outside ASCII come back as they are."""
    pid = make_person("volunteer", name="Élodie Ünal — 張")
    body = b'{"people": [%d, "\\ud800@x.example", "caf\\u00e9@x.example"]}' % pid
    response = api.post("/api/v1/training-status/check", data=body,
                        content_type="application/json")  # fmt: skip
    assert response.status_code == 200
    CHECK_OP.validate_response(response)
    results = response.get_json()["results"]
    assert results[0]["person"]["name"] == "Élodie Ünal — 張"
    assert results[1] == {"ref": "\ud800@x.example", "error": "not_found"}
    assert results[2] == {"ref": "café@x.example", "error": "not_found"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"people": []}, "invalid_people"),
        ({"people": "val@x.example"}, "invalid_people"),
        ({"people": [True]}, "invalid_people"),
        ({"people": [1.5]}, "invalid_people"),
        ({"people": [-3]}, "invalid_people"),
        ({"people": [{"id": 1}]}, "invalid_people"),
        ({"people": ["x" * 300]}, "invalid_people"),
        ({"people": [1], "colour": "red"}, "unknown_field"),
        ({"people": [1], "policy": 7}, "invalid_policy"),
        ({"people": list(range(1, 1002))}, "too_many_people"),
        ([1, 2], "invalid_body"),
    ],
)
def test_check_refuses_bad_bodies_with_400(api, body, code):
    response = api.post("/api/v1/training-status/check", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code
    CHECK_OP.validate_response(response)


def test_check_refuses_malformed_json_other_types_and_huge_bodies(api):
    bad = api.post("/api/v1/training-status/check", data="{nope", content_type="application/json")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_json"
    form = api.post("/api/v1/training-status/check", data={"people": "1"})
    assert form.status_code == 415 and form.get_json()["error"]["code"] == "unsupported_media_type"
    huge = api.post("/api/v1/training-status/check", data="[" + "1," * 2_000_000 + "1]",
                    content_type="application/json")  # fmt: skip
    assert huge.status_code == 413 and huge.get_json()["error"]["code"] == "payload_too_large"
    latin = api.post("/api/v1/training-status/check", data=b'{"people": ["\xff"]}',
                     content_type="application/json")  # fmt: skip
    assert latin.status_code == 400


def test_check_uses_the_same_number_of_queries_for_two_or_a_thousand_people(
    app, api, make_person, monkeypatch
):
    ids = [make_person("staff", password=None) for _ in range(14)]
    with app.app_context():
        engine = db.engine
        # Adding people stored their answers; forget them, so the first lookups run the rule.
        db.session.execute(text("DELETE FROM stored_status"))
        db.session.commit()
    counted: list[str] = []

    def queries(refs: list) -> int:
        counted.clear()
        response = api.post("/api/v1/training-status/check", json={"people": refs})
        assert response.status_code == 200 and len(response.get_json()["results"]) == len(refs)
        return len(counted)

    def count(*args) -> None:
        counted.append(args[2])

    # Statements through SQLAlchemy, and the hand-written reads of the hot path.
    read = Reader.all
    monkeypatch.setattr(
        Reader, "all", lambda self, sql, **kw: count(0, 0, sql) or read(self, sql, **kw)
    )
    event.listen(engine, "before_cursor_execute", count)
    api.post("/api/v1/training-status/check", json={"people": ids[:1]})  # token's first use
    thousand = ids[4:] + [f"nobody{n}@x.example" for n in range(990)]
    # Computed by the rule (nothing stored yet), then answered from what was stored.
    computed_few, computed_many = queries(ids[2:4]), queries(thousand)
    stored_few, stored_many = queries(ids[2:4]), queries(thousand)
    event.remove(engine, "before_cursor_execute", count)
    assert computed_few == computed_many
    assert stored_few == stored_many == 3  # token, policy, answers
    assert stored_few < computed_few


def test_the_openapi_document_is_served_without_a_token(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"] == "3.1.0"


# --- schemathesis over the whole API ----------------------------------------------------------------


API_EXAMPLES = examples(200)  # per operation, on SQLite
API_PG_EXAMPLES = examples(50)  # per operation on PostgreSQL, to keep the suite quick on two cores


@pytest.fixture
def api_schema(app, make_person):
    for role in ("staff", "volunteer"):
        make_person(role, email=f"{role}@ladysmith.example")
    # The document as served, every operation included (loading it by its own address would leave
    # the document's own operation out).
    served = app.test_client().get("/api/v1/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(served)
    schema.app = app
    # Schemathesis calls the app as http://localhost/ (the document's server is "/").
    app.config["ALLOWED_HOSTS"] = [*app.config["ALLOWED_HOSTS"], "localhost"]
    return schema


def test_generated_requests_never_fail_or_leave_the_spec(api_schema, token, database_url):
    """Schemathesis generates requests for every operation in the OpenAPI document (valid and
    invalid ones) and checks each response: never a 5xx, never HTML, always the documented status,
    content type and schema. 200 requests per operation on SQLite, 50 on PostgreSQL."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    documented = {
        f"{method.upper()} {path}"
        for path, item in document()["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete", "head", "options")
    }
    assert {op.label for op in operations} == documented
    assert len(operations) == len(documented) >= 3
    examples = API_PG_EXAMPLES if database_url.startswith("postgresql") else API_EXAMPLES
    for operation in operations:
        check_operation(operation, token, examples)


def check_operation(operation, token, examples) -> None:
    strategy = operation.as_strategy()
    has_inputs = bool(operation.path_parameters or operation.query or operation.body)
    if has_inputs:
        strategy = strategy | operation.as_strategy(GenerationMode.NEGATIVE)
    calls = []

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"})
        calls.append(response.status_code)
        assert response.status_code < 500
        assert response.headers["content-type"] == ["application/json"]  # never an HTML page

    run()
    # An operation with no inputs has one request to make; the others make the full count.
    assert len(calls) >= (examples * 0.9 if has_inputs else 1), (operation.label, len(calls))


# --- a token that sees no personal details (F15) ------------------------------------------------


def test_a_status_only_token_never_sees_names_or_emails(app, client, make_person, runner):
    created = runner.invoke(
        args=["tokens", "create", "--name", "Rota", "--scope", "training:status"]
    )
    assert created.exit_code == 0, created.output
    headers = {"Authorization": f"Bearer {created.output.strip().splitlines()[-1]}"}
    tess = make_person("parent", name="Tess Trained", email="tess@ladysmith.example")
    una = make_person("volunteer", name="Una Untrained", email="una@ladysmith.example")
    train_people(app, tess)
    responses = [
        client.get(f"/api/v1/people/{tess}/training-status", headers=headers),
        client.get(f"/api/v1/people/{una}/training-status", headers=headers),
        client.get("/api/v1/people/9999/training-status", headers=headers),
        client.get(f"/api/v1/people/{tess}/training-status?policy=nope", headers=headers),
        client.post("/api/v1/training-status/check", headers=headers,
                    json={"people": [tess, una, 9999, 9]}),
        client.post("/api/v1/training-status/check", headers=headers,
                    json={"people": [una], "colour": "red"}),
        client.post("/api/v1/training-status/check", headers=headers,
                    json={"people": list(range(1, 60))}),
    ]  # fmt: skip
    for response in responses:
        text = response.get_data(as_text=True).lower()
        for secret in ("tess", "una", "ghost", "ladysmith", "parent", "volunteer"):
            assert secret not in text, (response.request.path, text)
        assert '"modules"' not in text and '"missing"' not in text
    first, by_email, unknown = (r.get_json() for r in responses[:3])
    STATUS_OP.validate_response(responses[0])
    assert first == {"person": {"id": tess}, "policy": {"slug": "social-media-policy",
                     "version": "1.0"}, "trained": True, "valid_until": first["valid_until"]}  # fmt: skip
    assert by_email["person"] == {"id": una} and by_email["trained"] is False
    assert responses[2].status_code == 404 and responses[3].status_code == 404
    CHECK_OP.validate_response(responses[4])
    batch = responses[4].get_json()
    assert [r.get("trained") for r in batch["results"]] == [True, False, None, None]
    assert batch["results"][2] == {"ref": 9999, "error": "not_found"}
    assert batch["results"][3] == {"ref": 9, "error": "not_found"}
    assert responses[5].status_code == 400
    assert {r["person"]["id"] for r in responses[6].get_json()["results"] if "person" in r} == {
        tess,
        una,
    }


def test_a_status_only_token_cannot_turn_an_email_into_an_id(app, client, make_person, runner):
    created = runner.invoke(
        args=["tokens", "create", "--name", "Rota", "--scope", "training:status"]
    )
    headers = {"Authorization": f"Bearer {created.output.strip().splitlines()[-1]}"}
    una = make_person("volunteer", name="Una Untrained", email="una@ladysmith.example")
    responses = [
        client.get("/api/v1/people/una@ladysmith.example/training-status", headers=headers),
        client.get("/api/v1/people/ghost@ladysmith.example/training-status", headers=headers),
        client.post("/api/v1/training-status/check", headers=headers,
                    json={"people": [una, "una@ladysmith.example"]}),
        client.post("/api/v1/training-status/check", headers=headers,
                    json={"people": ["ghost@ladysmith.example"]}),
    ]  # fmt: skip
    for response in responses:
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["code"] == "email_not_allowed" and "person's id" in error["message"]
        assert str(una) not in response.get_data(as_text=True)
    STATUS_OP.validate_response(responses[0])
    CHECK_OP.validate_response(responses[2])
    # A token that may see emails still looks people up by email.
    full = runner.invoke(args=["tokens", "create", "--name", "HR", "--scope", "training:read"])
    answer = client.get(
        "/api/v1/people/una@ladysmith.example/training-status",
        headers={"Authorization": f"Bearer {full.output.strip().splitlines()[-1]}"},
    )
    assert answer.status_code == 200 and answer.get_json()["person"]["id"] == una


def test_administrators_create_a_status_only_token(app, auth, make_person):
    auth.as_person(make_person("admin"))
    pid = make_person("staff", name="Sam Staff", email="sam@ladysmith.example")
    response = auth.post("/admin/tokens/", {"name": "Door system", "scopes": ["training:status"]})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "no names, emails or module detail" in page
    secret = page.split('<code class="copyable">')[1].split("<")[0]
    answer = app.test_client().get(
        f"/api/v1/people/{pid}/training-status", headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200 and answer.get_json()["person"] == {"id": pid}
    assert "Sam" not in answer.get_data(as_text=True)


def test_the_openapi_document_describes_the_status_only_scope(client):
    text = client.get("/api/v1/openapi.json").get_data(as_text=True)
    assert "training:status" in text and "StatusOnly" in text


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_refused_as_invalid_json(api, depth):
    body = '{"people":' + "[" * depth + "]" * depth + "}"
    response = api.post("/api/v1/training-status/check", data=body,
                        content_type="application/json")  # fmt: skip
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    CHECK_OP.validate_response(response)


def test_a_chunked_body_over_the_limit_is_refused_as_too_large(app, client, api):
    """Sent without a Content-Length (chunked), so only reading it can tell its size. Gunicorn
    hands such a body over de-chunked and marks the stream as ending where the body ends."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = b'{"people": [' + b"1," * limit + b"1]}"
    response = client.post(
        "/api/v1/training-status/check",
        input_stream=io.BytesIO(body),
        headers={**api.headers, "Content-Type": "application/json",
                 "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )  # fmt: skip
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    small = client.post(
        "/api/v1/training-status/check",
        input_stream=io.BytesIO(b'{"people": [1]}'),
        headers={**api.headers, "Content-Type": "application/json",
                 "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )  # fmt: skip
    assert small.status_code == 200
