"""Governors' reports: figures against a hand-counted federation, filters, exports, evidence packs."""

from __future__ import annotations

import csv
import io
import subprocess

import pytest
from sqlalchemy import select, text

from core.db import db, utcnow
from people.models import Person
from reports import figures
from reports.export import csv_stream, neutralise
from tests.conftest import cached_world, complete_modules, evidence_guard_off, train_people
from training.models import Policy

pytestmark = pytest.mark.usefixtures("published")


@pytest.fixture
def federation(request, app, make_person):
    return cached_world(request, app, make_person, lambda: _build_federation(app, make_person))


def _build_federation(app, make_person):
    """A small federation whose figures are counted by hand in the tests below.

    Infant: Ann and Bob trained (staff), Cat staff not started.
    Junior: Dan staff trained but expired, Eve volunteer part-way.
    Federation-wide: Fay parent not started; Gus staff trained but deactivated (a leaver).
    Hal is a governor at the infant school, trained.
    """
    ids = {
        "ann": make_person("staff", name="Ann Archer", schools=("infant",)),
        "bob": make_person("staff", name="Bob Baker", schools=("infant",)),
        "cat": make_person("staff", name="Cat Cole", schools=("infant",)),
        "dan": make_person("staff", name="Dan Dale", schools=("junior",)),
        "eve": make_person("volunteer", name="Eve Evans", schools=("junior",)),
        "fay": make_person("parent", name="Fay Fox"),
        "gus": make_person("staff", name="Gus Gray"),
        "hal": make_person("governor", name="Hal Hill", schools=("infant",)),
    }
    train_people(app, ids["ann"], ids["bob"], ids["dan"], ids["gus"], ids["hal"])
    with app.app_context():
        s = db.session
        # Dan signed two years ago: his training has expired.
        with evidence_guard_off(s, "acknowledgement"):
            s.execute(
                text("UPDATE acknowledgement SET at = :at WHERE person_id = :p"),
                {
                    "at": (utcnow().replace(year=utcnow().year - 2)).replace(tzinfo=None),
                    "p": ids["dan"],
                },
            )
        policy = s.scalar(select(Policy))
        complete_modules(s, s.get(Person, ids["eve"]), policy, only={"scope", "tone"})
        s.get(Person, ids["gus"]).active = False
        s.commit()
    return ids


def _figures(app):
    with app.app_context():
        figures.up_to_date()
        policy = db.session.scalar(select(Policy))
        schools = {"infant": "Ladysmith Infant School", "junior": "Ladysmith Junior School"}
        return (
            {c.key: c for c in figures.by_school(db.session, policy.id, schools)},
            {c.key: c for c in figures.by_role(db.session, policy.id)},
            figures.overall(db.session, policy.id),
        )


def test_completion_by_school_and_role_matches_a_hand_count(app, federation):
    schools, roles, overall = _figures(app)
    infant, junior, wide = schools["infant"], schools["junior"], schools[""]
    assert (infant.required, infant.trained, infant.due) == (4, 3, 1)  # Ann, Bob, Hal; Cat
    assert round(infant.percent) == 75
    assert (junior.required, junior.trained, junior.due) == (2, 0, 2)  # Dan expired, Eve
    assert (wide.required, wide.trained) == (1, 0)  # Fay; Gus has left and is not counted
    assert (roles["staff"].required, roles["staff"].trained) == (4, 2)
    assert (roles["governor"].required, roles["governor"].trained) == (1, 1)
    assert overall.counts == {"trained": 3, "not_started": 2, "expired": 1, "in_progress": 1,
                              "inactive": 1}  # fmt: skip


def test_the_report_page_shows_the_figures_charts_and_tables(app, auth, make_person, federation):
    client = auth.as_person(make_person("governor", name="Gill Governor"))
    page = client.get("/reports/").get_data(as_text=True)
    assert "<strong>3 of 8</strong> people who must be trained are trained (38%)" in page
    # Charts are SVG images that say what they show, with the figures as a table too.
    assert page.count('role="img"') == 3
    assert '<desc id="chart-schools-desc">Ladysmith Infant School: 75% (3 of 4)' in page
    assert "<caption>Completion by school</caption>" in page
    assert "<caption>Acknowledgements signed each month</caption>" in page


def test_governors_and_slt_read_reports_others_cannot(app, auth, client, make_person, federation):
    assert client.get("/reports/").status_code == 302  # sign in first
    staff = auth.as_person(make_person("staff"))
    assert staff.get("/reports/").status_code == 403
    assert staff.get("/reports/people.csv").status_code == 403
    client.post("/sign-out")


@pytest.mark.parametrize("role", ["governor", "slt", "admin"])
def test_report_readers(app, auth, make_person, role):
    client = auth.as_person(make_person(role))
    assert client.get("/reports/").status_code == 200
    assert client.get("/reports/people").status_code == 200


def _names(page: str) -> list[str]:
    import re

    return re.findall(r'href="/reports/people/\d+">([^<]+)</a>', page)


def test_people_table_filters_and_pages(app, auth, make_person, federation):
    client = auth.as_person(make_person("slt", name="Zed Lead"))
    assert _names(client.get("/reports/people?school=infant").get_data(as_text=True)) == [
        "Ann Archer", "Bob Baker", "Cat Cole", "Hal Hill",
    ]  # fmt: skip
    not_trained = client.get("/reports/people?status=not_trained").get_data(as_text=True)
    assert _names(not_trained) == ["Cat Cole", "Dan Dale", "Eve Evans", "Fay Fox", "Zed Lead"]
    never = client.get("/reports/people?status=never_trained&role=staff").get_data(as_text=True)
    assert _names(never) == ["Cat Cole"]
    assert _names(client.get("/reports/people?status=expired").get_data(as_text=True)) == [
        "Dan Dale"
    ]
    assert _names(client.get("/reports/people?status=inactive").get_data(as_text=True)) == [
        "Gus Gray"
    ]
    assert _names(client.get("/reports/people?q=EVANS").get_data(as_text=True)) == ["Eve Evans"]
    # Trained people expire a year after signing: within 400 days, not within 30.
    assert (
        _names(client.get("/reports/people?status=expiring&days=30").get_data(as_text=True)) == []
    )
    expiring = client.get("/reports/people?status=expiring&days=366").get_data(as_text=True)
    assert _names(expiring) == ["Ann Archer", "Bob Baker", "Hal Hill"]
    app.config["PAGE_SIZE"] = 2
    first = client.get("/reports/people?school=infant").get_data(as_text=True)
    second = client.get("/reports/people?school=infant&page=2").get_data(as_text=True)
    assert _names(first) == ["Ann Archer", "Bob Baker"] and "Page 1 of 2" in first
    assert _names(second) == ["Cat Cole", "Hal Hill"]


def test_the_matrix_shows_each_module(app, auth, make_person, federation):
    client = auth.as_person(make_person("governor"))
    page = client.get("/reports/people?q=eve").get_data(as_text=True)
    assert page.count("cell--completed") == 2  # scope and tone
    assert page.count("cell--not_started") == 8  # the other volunteer modules
    assert page.count("cell--none") == 3  # modules volunteers need not do


def test_bad_filters_are_refused_with_a_message(app, auth, make_person):
    client = auth.as_person(make_person("governor"))
    response = client.get("/reports/people?status=everything&days=-3")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Choose a status from the list." in page and "Days must be a whole number" in page
    assert client.get("/reports/people.csv?school=atlantis").status_code == 400


def test_csv_export_streams_every_matching_person_safely(app, auth, make_person, federation):
    make_person("staff", name='=HYPERLINK("http://evil.example")', schools=("junior",))
    client = auth.as_person(make_person("governor"))
    response = client.get("/reports/people.csv?school=junior")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:5] == ["Name", "Email", "Roles", "Schools", "Status"]
    by_name = {r[0]: r for r in rows[1:]}
    assert set(by_name) == {'\'=HYPERLINK("http://evil.example")', "Dan Dale", "Eve Evans"}
    assert by_name["Dan Dale"][4] == "Expired"
    assert by_name["Eve Evans"][5:7] == ["2", "10"]


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formula_like_cells_are_neutralised(cell):
    assert neutralise(cell) == "'" + cell
    assert neutralise("Ann = Bob") == "Ann = Bob" and neutralise(None) == ""


def test_csv_streams_in_chunks():
    chunks = list(csv_stream(["A"], ([n] for n in range(450)), batch=200))
    assert len(chunks) == 3
    assert "".join(chunks).splitlines()[-1] == "449"


def test_a_persons_drill_down_shows_their_whole_history(app, auth, make_person, federation):
    client = auth.as_person(make_person("governor"))
    page = client.get(f"/reports/people/{federation['dan']}").get_data(as_text=True)
    assert "Dan Dale" in page and "Not trained" in page
    assert "training has expired and is due again" in page
    assert page.count("passed") >= 1 and "Scope" in page
    assert client.get("/reports/people/999999").status_code == 404


def test_the_evidence_pack_is_a_pdf_with_the_figures_and_the_register(
    app, auth, make_person, federation, tmp_path
):
    client = auth.as_person(make_person("governor"))
    response = client.get("/reports/schools/infant/evidence.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    path = tmp_path / "pack.pdf"
    path.write_bytes(response.data)
    words = " ".join(
        subprocess.run(
            ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "Training evidence: Ladysmith Infant School" in words
    assert "Everyone at Ladysmith Infant School 4 3 75% 1" in words
    assert "Staff 3 2 67% 1 Governor 1 1 100% 0" in words
    assert "Not trained (1)" in words and "Cat Cole" in words
    assert "Dan Dale" not in words  # another school
    assert "Register of approved social media accounts" in words
    assert client.get("/reports/schools/atlantis/evidence.pdf").status_code == 404
