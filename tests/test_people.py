"""People: CSV import, the administrator's pages, invitations, leavers."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.db import db
from people.models import Person
from people.service import ImportFailed, import_people
from tests.conftest import csrf_token
from training.loader import Federation, School

FED = Federation(
    "Test Federation",
    (School("infant", "Ladysmith Infant School"), School("junior", "Ladysmith Junior School")),
)


def people_count() -> int:
    return db.session.scalar(select(func.count()).select_from(Person))


def test_import_upserts_by_email_case_insensitively(app):
    with app.app_context():
        result = import_people(
            db.session,
            "name,email,roles,schools\n"
            "Ann Able,Ann@Ladysmith.example,staff;slt,infant\n"
            "Ben Best,ben@ladysmith.example,Governor,\n"
            "Cat Cole,cat@ladysmith.example,parent/carer,Ladysmith Junior School;infant\n",
            FED,
        )
        db.session.commit()
        assert sorted(result.created) == [
            "ann@ladysmith.example",
            "ben@ladysmith.example",
            "cat@ladysmith.example",
        ]
        again = import_people(
            db.session,
            "name,email,roles,schools\nAnn Able-Smith,ANN@ladysmith.example,staff,junior\n"
            "Ben Best,ben@ladysmith.example,governor,\n",
            FED,
        )
        db.session.commit()
        assert again.updated == ["ann@ladysmith.example"]
        assert again.unchanged == ["ben@ladysmith.example"]
        ann = db.session.scalar(select(Person).where(Person.email == "ann@ladysmith.example"))
        assert (ann.name, ann.roles, ann.schools) == ("Ann Able-Smith", ["staff"], ["junior"])
        cat = db.session.scalar(select(Person).where(Person.email == "cat@ladysmith.example"))
        assert cat.roles == ["parent"] and cat.schools == ["infant", "junior"]
        assert people_count() == 3


def test_import_with_any_bad_row_imports_nothing_and_reports_every_line(app):
    text = (
        "name,email,roles,schools\n"
        "Good Person,good@ladysmith.example,staff,\n"
        ",nobody@ladysmith.example,staff,\n"
        "Bad Email,not-an-email,staff,\n"
        "Bad Role,role@ladysmith.example,pupil,\n"
        "Bad School,school@ladysmith.example,staff,secondary\n"
        "No Role,norole@ladysmith.example,,\n"
        "Twice,good@ladysmith.example,staff,\n"
    )
    with app.app_context():
        with pytest.raises(ImportFailed) as caught:
            import_people(db.session, text, FED)
        db.session.rollback()
        messages = [str(e) for e in caught.value.errors]
        assert people_count() == 0
    assert messages[0] == "line 3: Enter the person's full name."
    assert messages[1].startswith("line 4: not-an-email is not a valid email address")
    assert messages[2].startswith("line 5: ") and "unknown role 'pupil'" in messages[2]
    assert messages[3].startswith("line 6: ") and "unknown school 'secondary'" in messages[3]
    assert messages[4] == "line 7: Choose at least one role."
    assert messages[5] == "line 8: good@ladysmith.example is also on line 2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: the file is empty"),
        ("full name,mail\nA,a@b.example\n", "line 1: the header must name the columns"),
        ("name,email,roles,schools\n", "line 2: the file has a header but no people"),
    ],
)
def test_import_rejects_files_without_people(app, text, message):
    with app.app_context(), pytest.raises(ImportFailed) as caught:
        import_people(db.session, text, FED)
    assert str(caught.value.errors[0]).startswith(message)


def test_import_command_reports_rows_and_exits_non_zero(runner, app, tmp_path):
    bad = tmp_path / "people.csv"
    bad.write_text("name,email,roles,schools\nA Person,a@ladysmith.example,wizard,\n")
    result = runner.invoke(args=["people", "import", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:line 2: unknown role 'wizard'" in result.output
    good = tmp_path / "good.csv"
    good.write_text(
        "\ufeffname,email,roles,schools\r\nA Person,a@ladysmith.example,staff,infant\r\n"
    )
    result = runner.invoke(args=["people", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert "1 added, 0 updated, 0 unchanged" in result.output


# --- administrator pages ---------------------------------------------------------------------------


@pytest.fixture
def admin(auth, make_person):
    auth.as_person(make_person("admin", name="Alex Admin"))
    return auth


def test_admin_adds_a_person_and_bad_input_reshows_the_form(app, admin):
    response = admin.post(
        "/admin/people/new", {"name": "", "email": "nope", "roles": []}, "/admin/people/new"
    )
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "There is a problem" in page and "Enter the person&#39;s full name." in page
    response = admin.post(
        "/admin/people/new",
        {"name": "Dee Dunn", "email": "Dee@Ladysmith.example", "roles": ["volunteer"],
         "schools": ["junior"]},
        "/admin/people/new",
    )  # fmt: skip
    assert response.status_code == 302
    with app.app_context():
        dee = db.session.scalar(select(Person).where(Person.email == "dee@ladysmith.example"))
        assert dee.roles == ["volunteer"] and dee.schools == ["junior"]
    duplicate = admin.post(
        "/admin/people/new",
        {"name": "Dee Again", "email": "DEE@ladysmith.example", "roles": ["staff"]},
        "/admin/people/new",
    )
    assert duplicate.status_code == 400
    assert "already exists" in duplicate.get_data(as_text=True)


def test_admin_edits_and_deactivates_a_leaver_who_can_no_longer_sign_in(app, admin, make_person):
    pid = make_person("staff", name="Eve Early", email="eve@ladysmith.example")
    url = f"/admin/people/{pid}"
    response = admin.post(url, {"name": "Eve Early-Late", "email": "eve@ladysmith.example",
                                "roles": ["staff", "slt"]})  # fmt: skip
    assert response.status_code == 302
    confirm = admin.client.get(f"{url}/deactivate")
    assert "They are signed out everywhere" in confirm.get_data(as_text=True)
    response = admin.post(f"{url}/deactivate")
    assert response.status_code == 302
    with app.app_context():
        eve = db.session.get(Person, pid)
        assert not eve.active and eve.deactivated_at is not None
        assert eve.roles == ["slt", "staff"] and eve.name == "Eve Early-Late"
    other = app.test_client()
    from tests.conftest import Auth

    assert Auth(app, other).sign_in("eve@ladysmith.example").status_code == 400


def test_changing_an_email_or_roles_needs_the_admin_to_have_signed_in_recently(
    app, admin, make_person
):
    """A session left open for more than ten minutes can rename someone, but cannot redirect
    their new-password links or change what they may do until the admin signs in again."""
    import time

    from core.web import SESSION_STARTED

    pid = make_person("staff", name="Rita Roles", email="rita@ladysmith.example")
    url = f"/admin/people/{pid}"
    with admin.client.session_transaction() as session:
        session[SESSION_STARTED] = time.time() - 11 * 60
    for change in (
        {"email": "attacker@elsewhere.example", "roles": ["staff"]},
        {"email": "rita@ladysmith.example", "roles": ["staff", "admin"]},
    ):
        response = admin.post(url, {"name": "Rita Roles", **change})
        page = response.get_data(as_text=True)
        assert response.status_code == 400 and "needs a sign-in in the last ten minutes" in page
        assert "Sign out and in again" in page
    response = admin.post(url, {"name": "Rita Renamed", "email": "RITA@ladysmith.example",
                                "roles": ["staff"]})  # fmt: skip
    assert response.status_code == 302  # a new name alone is fine
    with app.app_context():
        rita = db.session.get(Person, pid)
        assert (rita.name, rita.email, rita.roles) == (
            "Rita Renamed",
            "rita@ladysmith.example",
            ["staff"],
        )
    # Signing out and in again (the button's form) comes back to the page, and then it works.
    token = csrf_token(admin.client, url)
    out = admin.client.post("/sign-out", data={"csrf_token": token, "next": url})
    assert out.status_code == 302 and out.location.endswith(f"/sign-in?next={url}")
    back = admin.sign_in(next(iter(_emails_with_role(app, "admin"))))
    assert back.status_code == 302
    response = admin.post(url, {"name": "Rita Renamed", "email": "rita.r@ladysmith.example",
                                "roles": ["staff", "slt"]})  # fmt: skip
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(Person, pid).email == "rita.r@ladysmith.example"


@pytest.mark.parametrize(
    ("url", "data"),
    [
        ("/admin/people/new", {"name": "Eve", "email": "eve@attacker.example",
                               "roles": ["staff", "admin"]}),
        ("/admin/people/{pid}/invite", {}),
        ("/admin/people/invite-all", {}),
        ("/admin/people/{pid}/second-factor/reset", {}),
        ("/admin/people/{pid}/deactivate", {}),
        ("/admin/people/{leaver}/reactivate", {}),
        ("/admin/people/{leaver}/erase", {}),
        ("/admin/tokens/", {"name": "Exfiltrate", "scopes": ["training:read"], "days": "365"}),
        ("/admin/people/import", "import"),
    ],
)  # fmt: skip
def test_a_stale_admin_session_changes_nobodys_access(app, admin, make_person, url, data):
    """Adding people or tokens, links, factor resets, leaving, returning and erasure each need a
    sign-in in the last ten minutes; a session left open longer changes nothing."""
    import io
    import time

    from audit.models import AuditEvent
    from core.web import SESSION_STARTED

    pid = make_person("admin", name="Olivia Other", email="olivia@ladysmith.example")
    leaver = make_person("staff", name="Lee Leaver", active=False)
    with app.app_context():
        db.session.get(Person, leaver).deactivated_at = None
        db.session.commit()
    url = url.format(pid=pid, leaver=leaver)
    token = csrf_token(admin.client, "/admin/people")
    with admin.client.session_transaction() as session:
        session[SESSION_STARTED] = time.time() - 11 * 60
    with app.app_context():
        before = db.session.scalar(select(func.count()).select_from(AuditEvent))
    if data == "import":
        csv = b"name,email,roles,schools\nOlivia Other,olivia@ladysmith.example,staff;slt,\n"
        data = {"file": (io.BytesIO(csv), "people.csv")}
    response = admin.client.post(url, data={**data, "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 403 and "Sign in again to do this" in page
    assert "Nothing was changed" in page
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == before
        assert db.session.get(Person, pid).roles == ["admin"]


def _emails_with_role(app, role: str) -> list[str]:
    from people.models import PersonRole

    with app.app_context():
        return list(
            db.session.scalars(select(Person.email).join(PersonRole).where(PersonRole.role == role))
        )


def test_people_list_filters_and_paginates(app, admin, make_person):
    app.config["PAGE_SIZE"] = 2
    for n in range(3):
        make_person("parent", name=f"Parent {n}", schools=("infant",))
    make_person("governor", name="Gov One")
    page = admin.client.get("/admin/people?role=parent").get_data(as_text=True)
    assert "3 people." in page and "Page 1 of 2" in page
    page = admin.client.get("/admin/people?role=parent&page=2").get_data(as_text=True)
    assert "Parent 2" in page and "Parent 0" not in page
    page = admin.client.get("/admin/people?school=none&q=gov").get_data(as_text=True)
    assert "1 person." in page and "Gov One" in page


def upload(admin, content: bytes, filename: str):
    from tests.conftest import csrf_token

    return admin.client.post(
        "/admin/people/import",
        data={"file": (io.BytesIO(content), filename),
              "csrf_token": csrf_token(admin.client, "/admin/people/import")},
        content_type="multipart/form-data",
    )  # fmt: skip


def test_import_upload_reports_errors_and_imports_good_files(app, admin):
    response = upload(
        admin, b"name,email,roles,schools\nX,x@ladysmith.example,nobody,\n", "people.csv"
    )
    assert response.status_code == 400
    assert "line 2: unknown role" in response.get_data(as_text=True)
    response = upload(admin, b"\x89PNG", "photo.png")
    assert response.status_code == 400
    assert "Upload a .csv file." in response.get_data(as_text=True)
    response = upload(admin, b"name,email\n\xff\xfe,x\n", "latin.csv")
    assert response.status_code == 400
    assert "not UTF-8 text" in response.get_data(as_text=True)
    response = upload(
        admin, b"name,email,roles,schools\nX Y,x@ladysmith.example,staff,infant\n", "people.csv"
    )
    assert response.status_code == 302
    with app.app_context():
        assert db.session.scalar(select(Person).where(Person.email == "x@ladysmith.example"))


def test_invitation_link_is_shown_without_smtp_and_works_once(app, admin, make_person, caplog):
    pid = make_person("volunteer", name="Val Vol", email="val@ladysmith.example", password=None)
    caplog.set_level("DEBUG")
    response = admin.post(f"/admin/people/{pid}/invite", form_url=f"/admin/people/{pid}")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    link = re.search(r"http://countersign\.test(/invite/[^<\s]+)", page).group(1)
    assert link.rsplit("/", 1)[1] not in caplog.text  # shown to the administrator, never logged
    assert link not in admin.client.get(f"/admin/people/{pid}").get_data(as_text=True)  # once
    volunteer = app.test_client()
    from tests.conftest import Auth, csrf_token

    token = csrf_token(volunteer, link)
    assert volunteer.get(link).status_code == 200
    mismatch = volunteer.post(link, data={"password": "a long password", "confirm": "another one",
                                          "csrf_token": token})  # fmt: skip
    assert mismatch.status_code == 400
    done = volunteer.post(link, data={"password": "a long password", "confirm": "a long password",
                                      "csrf_token": token})  # fmt: skip
    assert done.status_code == 302 and done.location == "/"
    assert volunteer.get("/").status_code == 200  # signed straight in
    assert (
        Auth(app, app.test_client()).sign_in("val@ladysmith.example", "a long password").status_code
        == 302
    )
    reused = app.test_client().get(link)
    assert reused.status_code == 400
    assert "already been used" in reused.get_data(as_text=True)
    assert 'href="/forgot-password"' in reused.get_data(as_text=True)


def test_invitation_link_expires(app, make_person):
    from people.auth import INVITE, LinkError, make_link_token, person_for_token

    pid = make_person("parent", password=None)
    with app.app_context():
        person = db.session.get(Person, pid)
        token = make_link_token(app.config["SECRET_KEY"], INVITE, person)
        assert person_for_token(db.session, app.config["SECRET_KEY"], INVITE, token, 60) == person
        with pytest.raises(LinkError, match="expired"):
            person_for_token(db.session, app.config["SECRET_KEY"], INVITE, token, -1)
        with pytest.raises(LinkError, match="not valid"):
            person_for_token(db.session, app.config["SECRET_KEY"], INVITE, token + "x", 60)


def test_non_admins_cannot_reach_admin_pages(auth, make_person):
    auth.as_person(make_person("staff", "slt", "governor"))
    for url in ("/admin/people", "/admin/people/new", "/admin/people/import"):
        assert auth.client.get(url).status_code == 403


def test_names_with_control_characters_are_refused_with_their_line(app):
    with app.app_context(), pytest.raises(ImportFailed) as caught:
        import_people(
            db.session, "name,email,roles,schools\nNu\x00ll,n@ladysmith.example,staff,\n", FED
        )
    assert (
        str(caught.value.errors[0])
        == "line 2: The name contains control characters; type it again."
    )


@pytest.mark.usefixtures("published")
def test_person_page_shows_their_training_status_and_what_is_missing(admin, make_person):
    pid = make_person("volunteer", name="Vera Vol")
    page = admin.client.get(f"/admin/people/{pid}").get_data(as_text=True)
    assert "not trained — 0 of 10 modules completed" in page
    assert "Process for creating new accounts: not started" in page
    assert "Signature: policy not yet signed" in page


def test_an_administrator_cannot_lock_themselves_out(app, auth, make_person):
    me = make_person("admin", "staff", name="Alex Admin", email="alex@ladysmith.example")
    auth.as_person(me)
    data = {"name": "Alex Admin", "email": "alex@ladysmith.example", "roles": ["staff"]}
    response = auth.post(f"/admin/people/{me}", data)
    assert response.status_code == 400
    assert "cannot remove your own administrator role" in response.get_data(as_text=True)
    response = auth.post(f"/admin/people/{me}/deactivate", form_url=f"/admin/people/{me}")
    with app.app_context():
        person = db.session.get(Person, me)
        assert person.active and person.roles == ["admin", "staff"]


@pytest.mark.usefixtures("published")
def test_people_list_shows_training_and_account_state(admin, make_person):
    make_person("volunteer", name="Newly Imported", password=None)
    page = admin.client.get("/admin/people").get_data(as_text=True)
    row = page[page.index("Newly Imported") :].split("</tr>")[0]
    assert "Not trained</strong><br>0 of 10 modules" in row
    assert "No password yet" in row
    assert "1 active person has no password yet." in page


def test_invite_all_gives_a_link_to_everyone_without_a_password(app, admin, make_person):
    for n in range(3):
        make_person("parent", name=f"Parent {n}", password=None)
    make_person("staff", name="Has Password")
    make_person("staff", name="Gone", password=None, active=False)
    response = admin.post("/admin/people/invite-all", form_url="/admin/people")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    links = re.findall(r"http://countersign\.test/invite/[^<\s]+", page)
    assert len(links) == 3
    assert "Has Password" not in page and "Gone" not in page
    volunteer = app.test_client()
    assert volunteer.get(links[0].removeprefix("http://countersign.test")).status_code == 200


def test_import_template_downloads_and_imports_cleanly(app, admin):
    response = admin.client.get("/admin/people/import/template.csv")
    assert response.mimetype == "text/csv"
    with app.app_context():
        result = import_people(db.session, response.get_data(as_text=True), FED)
    assert len(result.created) == 3


def test_setup_without_demo_creates_no_account_and_says_how_to_add_the_first_admin(
    app, runner, database_url
):
    result = runner.invoke(args=["setup"])
    assert result.exit_code == 0, result.output
    assert "demo.ladysmith.example" not in result.output
    assert "Nobody can sign in yet" in result.output and "flask people add" in result.output
    with app.app_context():
        assert people_count() == 0
    if database_url.startswith("sqlite"):
        notes = Path(database_url.removeprefix("sqlite:///")).with_name("demo-people.txt")
        assert not notes.exists()
    added = runner.invoke(
        args=["people", "add", "--name", "Ada Admin", "--email", "ada@ladysmith.example",
              "--roles", "staff;admin"]
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    again = runner.invoke(args=["setup"])
    assert "Nobody can sign in yet" not in again.output
    with app.app_context():
        assert people_count() == 1


def test_demo_people_are_seeded_once_with_details_beside_the_database(app, runner, database_url):
    first = runner.invoke(args=["setup", "--demo"])
    assert first.exit_code == 0, first.output
    assert first.output.count("@demo.ladysmith.example") == 6
    second = runner.invoke(args=["setup", "--demo"])
    assert "@demo.ladysmith.example" not in second.output
    with app.app_context():
        assert people_count() == 6
    if database_url.startswith("sqlite"):
        notes = Path(database_url.removeprefix("sqlite:///")).with_name("demo-people.txt")
        assert "admin@demo.ladysmith.example" in notes.read_text()


@pytest.mark.parametrize("role", ["admin", "slt", "governor"])
def test_a_promotion_ends_the_sessions_opened_before_it(app, admin, make_person, role):
    """A session opened as staff (a password alone, or from the LMS) never becomes an
    administrator's, SLT's or governor's: the promoted person signs in again as the role demands."""
    from tests.conftest import Auth

    pid = make_person("staff", name="Pat Promoted", email="pat@ladysmith.example")
    pat = Auth(app, app.test_client()).as_person(pid)
    assert pat.get("/").status_code == 200
    response = admin.post(
        f"/admin/people/{pid}",
        {"name": "Pat Promoted", "email": "pat@ladysmith.example", "roles": ["staff", role]},
    )
    assert response.status_code == 302
    for page in ("/admin/people", "/reports/", "/"):
        answer = pat.get(page)
        assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"], page
    # The administrator who made the change keeps their own session.
    assert admin.client.get("/admin/people").status_code == 200


def test_a_demotion_or_a_learner_role_leaves_sessions_alone(app, admin, make_person):
    from tests.conftest import Auth

    pid = make_person("staff", name="Val Volunteer", email="val@ladysmith.example")
    val = Auth(app, app.test_client()).as_person(pid)
    response = admin.post(
        f"/admin/people/{pid}",
        {
            "name": "Val Volunteer",
            "email": "val@ladysmith.example",
            "roles": ["staff", "volunteer"],
        },
    )
    assert response.status_code == 302
    assert val.get("/").status_code == 200
