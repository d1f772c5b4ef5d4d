"""Certificates: one per signature, a PDF/A document, checked in public, downloaded by the right
people, and a school's certificates as one ZIP."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import threading
import xml.etree.ElementTree as ET
import zipfile
from datetime import timedelta

import pytest
import segno
from PIL import Image
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, undefer
from weasyprint import HTML
from weasyprint.urls import FatalURLFetchingError

import certificates.issuing
from certificates.issuing import issue_due, render_missing
from certificates.models import Certificate
from certificates.render import NoFetching, certificate_document, verification_url
from certificates.verification import EXPIRED, VALID, verify
from core.db import db, utcnow, writing
from core.outbox import OutboxMessage, enqueue
from core.web import format_date
from people.models import Person
from people.service import deactivate
from tests.conftest import (
    Auth,
    cached_world,
    complete_modules,
    csrf_token,
    evidence_guard_off,
    run_worker,
    train_people,
)
from training.models import Acknowledgement, Policy
from training.progress import AckRequest, acknowledge
from training.status import add_months, training_status
from training.status_store import STATUS_CHANGED

pytestmark = pytest.mark.usefixtures("published")

BASE = "/policies/social-media-policy"
POLICY_TITLE = "Social Media Policy"


def client_for(app, pid):
    return Auth(app, app.test_client()).as_person(pid)


def sign(app, pid):
    """Complete the modules, then sign on the page as a learner does; the worker then runs."""
    with app.app_context():
        person = db.session.get(Person, pid)
        complete_modules(db.session, person, db.session.scalar(select(Policy)))
        db.session.commit()
        name = person.name
    client = client_for(app, pid)
    token = csrf_token(client, f"{BASE}/sign")
    response = client.post(
        f"{BASE}/sign", data={"csrf_token": token, "confirm": "y", "full_name": name}
    )
    assert response.status_code == 302 and response.location.endswith(f"{BASE}/signed")
    run_worker(app)
    return client


def certificates_of(app, pid) -> list[Certificate]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(Certificate)
                .where(Certificate.person_id == pid)
                .options(undefer(Certificate.pdf))
                .order_by(Certificate.id)
            )
        )


def the_certificate(app, pid) -> Certificate:
    (certificate,) = certificates_of(app, pid)
    return certificate


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def issue_everything(app) -> None:
    with app.app_context():
        with writing(db.session):
            issue_due(db.session, None)
        assert render_missing(db.session)[1] == 0  # none failed


def dates(app, certificate: Certificate) -> tuple[str, str]:
    """Issue date and valid-until as the federation reads them (its time zone)."""
    with app.app_context():
        return format_date(certificate.issued_at), format_date(certificate.valid_until)


def pdf_text(pdf: bytes) -> str:
    """The PDF's text in drawing order, whitespace collapsed (a title may wrap in its column)."""
    out = subprocess.run(
        ["pdftotext", "-raw", "-", "-"], input=pdf, capture_output=True, check=True
    )
    return " ".join(out.stdout.decode().split())


# --- issuing ----------------------------------------------------------------------------------


def test_signing_on_the_page_issues_a_certificate_with_its_pdf(app, make_person):
    pid = make_person("volunteer", name="Vera Volunteer")
    sign(app, pid)
    with app.app_context():
        ack = db.session.scalar(select(Acknowledgement).where(Acknowledgement.person_id == pid))
        status = training_status(
            db.session, db.session.get(Person, pid), db.session.scalar(select(Policy))
        )
    certificate = the_certificate(app, pid)
    assert certificate.acknowledgement_id == ack.id == status.acknowledgement_id
    assert certificate.person_name == "Vera Volunteer"
    assert certificate.policy_title == POLICY_TITLE and certificate.version_label == "1.0"
    assert certificate.federation_name == "Ladysmith Federation"
    assert certificate.module_titles == [m.title for m in status.modules]
    assert certificate.valid_until == add_months(ack.at, 12) == status.valid_until
    assert len(certificate.code) == 27  # secrets.token_urlsafe(20): 160 bits
    assert certificate.pdf.startswith(b"%PDF-")
    assert certificate.pdf_sha256 == hashlib.sha256(certificate.pdf).hexdigest()


def test_one_certificate_per_signature_however_often_the_event_is_handled(app, make_person, caplog):
    pid = make_person("staff")
    train_people(app, pid)  # signed: the change is in the outbox, the worker has not run
    assert certificates_of(app, pid) == []
    with app.app_context():  # the same event twice, as a second worker might see it
        event = db.session.scalar(
            select(OutboxMessage).where(OutboxMessage.topic == STATUS_CHANGED,
                                        OutboxMessage.person_id == pid)
            .order_by(OutboxMessage.id.desc())
        )  # fmt: skip
        enqueue(db.session, STATUS_CHANGED, event.payload, person_id=pid)
        db.session.commit()
    run_worker(app)
    run_worker(app)
    with app.app_context():
        with writing(db.session):
            assert issue_due(db.session, [pid]) == []
    assert count(app, Certificate) == 1
    assert the_certificate(app, pid).pdf.startswith(b"%PDF-")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_simultaneous_issuing_records_exactly_one(app, make_person):
    pid = make_person("staff")
    train_people(app, pid)  # signed directly: no signal, nothing issued yet
    assert count(app, Certificate) == 0
    barrier = threading.Barrier(4)
    issued: list[int] = []
    errors: list[BaseException] = []

    def issue() -> None:
        try:
            with app.app_context():
                barrier.wait()
                with writing(db.session):
                    issued.append(len(issue_due(db.session, [pid])))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(issued) == [0, 0, 0, 1]
    assert count(app, Certificate) == 1


def test_a_failure_to_issue_never_fails_the_signature(app, make_person, monkeypatch, runner):
    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    pid = make_person("staff")
    monkeypatch.setattr(certificates.issuing, "issue_due", broken)
    sign(app, pid)  # still signed and sent on to the confirmation
    assert count(app, Acknowledgement) == 1
    assert count(app, Certificate) == 0
    monkeypatch.undo()
    result = runner.invoke(args=["certificates", "issue"])
    assert result.exit_code == 0, result.output
    assert "1 certificate(s) issued, 1 PDF(s) rendered." in result.output
    assert the_certificate(app, pid).pdf.startswith(b"%PDF-")
    again = runner.invoke(args=["certificates", "issue"])
    assert "0 certificate(s) issued, 0 PDF(s) rendered." in again.output


def test_the_issue_command_issues_what_is_due_for_everyone(app, make_person, runner):
    trained = [make_person("staff"), make_person("parent")]
    untrained = make_person("staff")
    train_people(app, *trained)
    result = runner.invoke(args=["certificates", "issue", "--no-render"])
    assert result.exit_code == 0, result.output
    assert "2 certificate(s) issued, 0 PDF(s) rendered." in result.output
    assert [the_certificate(app, pid).pdf for pid in trained] == [None, None]
    result = runner.invoke(args=["certificates", "issue"])
    assert "0 certificate(s) issued, 2 PDF(s) rendered." in result.output
    assert all(the_certificate(app, pid).pdf.startswith(b"%PDF-") for pid in trained)
    assert certificates_of(app, untrained) == []


def test_a_failed_rendering_is_done_on_first_download_and_stored(app, make_person, monkeypatch):
    def broken(certificate):
        raise OSError("fonts missing")

    pid = make_person("staff", name="Rita Render")
    monkeypatch.setattr(certificates.issuing, "render", broken)
    client = sign(app, pid)
    certificate = the_certificate(app, pid)
    assert certificate.pdf is None and certificate.pdf_sha256 is None
    monkeypatch.undo()
    response = client.get(f"/certificates/{certificate.code}.pdf")
    assert response.status_code == 200 and response.data.startswith(b"%PDF-")
    stored = the_certificate(app, pid)
    assert stored.pdf == response.data
    assert stored.pdf_sha256 == hashlib.sha256(response.data).hexdigest()


# --- the PDF ----------------------------------------------------------------------------------


def test_the_pdf_names_the_federation_person_policy_modules_dates_and_code(app, make_person):
    pid = make_person("staff", name="Grace Hopper")
    sign(app, pid)
    certificate = the_certificate(app, pid)
    text = pdf_text(certificate.pdf)
    issued, valid_until = dates(app, certificate)
    assert len(certificate.module_titles) == 13  # what a member of staff completes: all of them
    expected = ["Ladysmith Federation", "Certificate of training", "Grace Hopper",
                f"{POLICY_TITLE}, version 1.0", f"Date issued {issued}",
                f"Valid until {valid_until}", f"Verification code {certificate.code}",
                *certificate.module_titles]  # fmt: skip
    for words in expected:
        assert words in text, words
    out = subprocess.run(["pdfinfo", "-"], input=certificate.pdf, capture_output=True, check=True)
    assert "Pages:           1" in out.stdout.decode()
    assert "Page size:       841.89 x 595.276 pts (A4)" in out.stdout.decode()


def test_the_pdf_declares_pdf_a_3b_and_embeds_its_fonts(app, make_person, tmp_path):
    pid = make_person("staff")
    sign(app, pid)
    path = tmp_path / "certificate.pdf"
    path.write_bytes(the_certificate(app, pid).pdf)
    xmp = subprocess.run(["pdfinfo", "-meta", str(path)], capture_output=True, check=True)
    root = ET.fromstring(xmp.stdout.decode().split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    pdfaid = "{http://www.aiim.org/pdfa/ns/id/}"
    declared = [
        (d.get(f"{pdfaid}part"), d.get(f"{pdfaid}conformance"))
        for d in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
        if d.get(f"{pdfaid}part")
    ]
    assert declared == [("3", "B")]
    fonts = subprocess.run(["pdffonts", str(path)], capture_output=True, check=True)
    rows = fonts.stdout.decode().splitlines()[2:]
    assert rows and all(" yes " in row and "DejaVu" in row for row in rows), rows


def test_the_qr_code_drawn_in_the_pdf_encodes_the_verification_url(app, make_person, tmp_path):
    pid = make_person("staff")
    sign(app, pid)
    certificate = the_certificate(app, pid)
    url = f"http://countersign.test/verify/{certificate.code}"  # BASE_URL, never the Host header
    qr = segno.make(url, error="m", mask=0)
    with app.app_context():
        assert verification_url(certificate.code) == url
        # Where the layout put the QR code on the page, in CSS pixels (1/96 inch).
        page = certificate_document(certificate).pages[0]
    box = next(
        b
        for b in page._page_box.descendants(placeholders=True)
        if getattr(b, "element_tag", None) == "img" and "qr" in b.element.get("class", "")
    )
    dpi = 200
    (tmp_path / "c.pdf").write_bytes(certificate.pdf)
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", "-png", "-singlefile",
                    str(tmp_path / "c.pdf"), str(tmp_path / "page")], check=True)  # fmt: skip
    side = qr.symbol_size(border=4)[0]
    module = box.width / side
    scale = dpi / 96

    with Image.open(tmp_path / "page.png") as png:
        image = png.convert("L")

    def dark(row: int, col: int) -> bool:
        x = (box.content_box_x() + (col + 4.5) * module) * scale
        y = (box.content_box_y() + (row + 4.5) * module) * scale
        return image.getpixel((round(x), round(y))) < 128

    drawn = [[dark(r, c) for c in range(len(qr.matrix))] for r in range(len(qr.matrix))]
    quiet = [dark(-1, c) for c in range(-1, len(qr.matrix) + 1)]
    assert drawn == [[bool(v) for v in row] for row in qr.matrix]
    assert not any(quiet)
    # Drawn as pixels, one a module, and kept sharp: printers and viewers are told not to smooth.
    images = subprocess.run(["pdfimages", "-list", str(tmp_path / "c.pdf")], capture_output=True,
                            check=True).stdout.decode().splitlines()[2:]  # fmt: skip
    assert len(images) == 1
    columns = images[0].split()  # page num type width height color comp bpc enc interp …
    assert (columns[3], columns[4], columns[9]) == (str(side), str(side), "no"), images


# --- verification ------------------------------------------------------------------------------


def test_the_verify_page_shows_a_valid_certificate_to_anyone_and_nothing_personal(
    app, client, make_person
):
    pid = make_person("volunteer", name="Vic Public", email="vic.private@home.example")
    sign(app, pid)
    certificate = the_certificate(app, pid)
    issued, valid_until = dates(app, certificate)
    response = client.get(f"/verify/{certificate.code}")  # not signed in
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "This certificate is valid" in page and "Valid</strong>" in page
    for shown in ("Vic Public", POLICY_TITLE, "<dd>1.0</dd>", issued, valid_until):
        assert shown in page, shown
    assert "vic.private" not in page and "home.example" not in page
    assert "olunteer" not in page  # nor the person's roles
    assert response.headers["X-Robots-Tag"] == "noindex"
    with app.app_context():
        deactivate(db.session.get(Person, pid))
        db.session.commit()
    after = client.get(f"/verify/{certificate.code}")
    assert after.status_code == 200 and "Vic Public" in after.get_data(as_text=True)


def test_the_verify_page_says_superseded_once_a_new_version_is_in_effect(
    app, client, runner, editable_content, make_person
):
    pid = make_person("volunteer", name="Sue Persede")
    sign(app, pid)
    certificate = the_certificate(app, pid)
    assert "This certificate is valid" in client.get(f"/verify/{certificate.code}").text
    app.config["CONTENT_DIR"] = str(editable_content)
    folder = editable_content / "social-media-policy"
    for path, old, new in [
        (folder / "08-tone.md", "- Engaging", "- Engaging and clear"),
        (folder / "policy.yaml", 'version: "1.0"', 'version: "1.1"'),
    ]:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    result = runner.invoke(args=["content", "publish"])
    assert "published version 1.1" in result.output, result.output
    page = client.get(f"/verify/{certificate.code}").get_data(as_text=True)
    assert "This certificate is no longer valid" in page and "Superseded" in page
    assert f"version 1.1 of the {POLICY_TITLE} is now in effect" in page
    assert "<dd>1.0</dd>" in page  # still says what it certified


def test_the_verify_page_says_expired_after_valid_until(app, client, make_person):
    pid = make_person("volunteer", name="Olga Older")
    signed_at = utcnow() - timedelta(days=400)
    with app.app_context():
        person, policy = db.session.get(Person, pid), db.session.scalar(select(Policy))
        complete_modules(db.session, person, policy)
        ack = acknowledge(db.session, person, policy, AckRequest(person.name, "d", "ip", "ua"),
                          now=signed_at)  # fmt: skip
        db.session.commit()
        with writing(db.session):
            (certificate,) = issue_due(db.session, [pid], now=signed_at + timedelta(minutes=1))
            assert issue_due(db.session, [pid]) == []  # expired now: nothing more is due
        assert certificate.valid_until == add_months(ack.at, 12) < utcnow()
        assert verify(db.session, certificate.code).state == EXPIRED
    page = client.get(f"/verify/{certificate.code}").get_data(as_text=True)
    assert "This certificate is no longer valid" in page and "Expired" in page
    assert "Superseded" not in page


def test_verification_turns_to_expired_at_valid_until(app, make_person):
    pid = make_person("staff")
    train_people(app, pid)
    with app.app_context():
        with writing(db.session):
            (certificate,) = issue_due(db.session, [pid])
        end = certificate.valid_until
        assert verify(db.session, certificate.code, now=end - timedelta(seconds=1)).state == VALID
        assert verify(db.session, certificate.code, now=end).state == EXPIRED


@pytest.mark.parametrize("code", ["A" * 27, "abc", "A" * 28, "%2e%2e", "A" * 26 + "!"])
def test_unknown_or_malformed_codes_are_not_found(client, code):
    response = client.get(f"/verify/{code}")
    assert response.status_code == 404
    assert "Certificate not found" in response.get_data(as_text=True)


def test_a_code_with_a_nul_byte_is_refused_plainly(client):
    # NUL in any part of an address is refused before a view runs (PostgreSQL cannot compare it).
    response = client.get("/verify/" + "A" * 26 + "%00")
    assert response.status_code == 400
    assert "could not be understood" in response.get_data(as_text=True)


# --- downloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "who, expected",
    [("owner", 200), ("other staff", 404), ("volunteer", 404), ("governor", 200), ("slt", 200),
     ("admin", 200), ("anonymous", 302)],
)  # fmt: skip
def test_who_may_download_a_certificate(app, make_person, who, expected):
    owner = make_person("staff", name="Olive Owner")
    sign(app, owner)
    certificate = the_certificate(app, owner)
    roles = {"other staff": "staff", "volunteer": "volunteer", "governor": "governor",
             "slt": "slt", "admin": "admin"}  # fmt: skip
    if who == "owner":
        client = client_for(app, owner)
    elif who == "anonymous":
        client = app.test_client()
    else:
        client = client_for(app, make_person(roles[who]))
    response = client.get(f"/certificates/{certificate.code}.pdf")
    assert response.status_code == expected
    if expected == 200:
        assert response.mimetype == "application/pdf" and response.data == certificate.pdf
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="certificate-social-media-policy-v1.0-olive-owner.pdf"'
        )
    elif expected == 302:
        assert "/sign-in" in response.location
    if who == "owner":
        assert client.get(f"/certificates/{'A' * 27}.pdf").status_code == 404


def test_downloads_serve_the_stored_bytes_and_never_render_again(app, make_person, monkeypatch):
    pid = make_person("staff")
    client = sign(app, pid)
    certificate = the_certificate(app, pid)

    def render_again(certificate):
        raise AssertionError("an issued certificate was rendered again")

    monkeypatch.setattr(certificates.issuing, "render", render_again)
    assert client.get(f"/certificates/{certificate.code}.pdf").data == certificate.pdf
    assert client.get(f"/certificates/{certificate.code}.pdf").data == certificate.pdf
    # Bytes stored behind the application's back, even with a digest to match, are never served:
    # tests/test_evidence_hardening.py.


def test_your_record_lists_your_certificates_with_download_links(app, make_person):
    pid = make_person("staff")
    other = make_person("staff")
    client = sign(app, pid)
    certificate = the_certificate(app, pid)
    page = client.get("/history").get_data(as_text=True)
    assert "<h2>Certificates</h2>" in page
    assert f'href="/certificates/{certificate.code}.pdf"' in page
    assert f'href="/verify/{certificate.code}"' in page
    theirs = client_for(app, other).get("/history").get_data(as_text=True)
    assert certificate.code not in theirs and "You have no certificates yet" in theirs


# --- a school's certificates as a ZIP ----------------------------------------------------------


@pytest.fixture
def schools(request, app, make_person):
    return cached_world(request, app, make_person, lambda: _build_schools(app, make_person))


def _build_schools(app, make_person):
    people = {
        "ann": make_person("staff", name="Ann Infant", schools=("infant",)),
        "ian": make_person("volunteer", name="Ian Infant", schools=("infant",)),
        "both": make_person("staff", name="Bo Both", schools=("infant", "junior")),
        "jo": make_person("staff", name="Jo Junior", schools=("junior",)),
        "fay": make_person("staff", name="Fay Federation"),
    }
    train_people(app, *people.values())
    issue_everything(app)
    people["gus"] = make_person("governor", name="Gus Governor")
    return people


def test_a_schools_zip_holds_its_certificates_and_no_others(app, schools):
    client = client_for(app, schools["gus"])
    response = client.get("/certificates/schools/infant.zip")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert response.headers["Content-Disposition"].startswith(
        'attachment; filename="certificates-infant-'
    )
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        names = sorted(info.filename for info in infos)
        assert [n.split("-social-media-policy-v1.0-")[0] for n in names] == [
            "ann-infant", "bo-both", "ian-infant"
        ]  # fmt: skip
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        for key, name in zip(("ann", "both", "ian"), names, strict=True):
            assert archive.read(name) == the_certificate(app, schools[key]).pdf
    with zipfile.ZipFile(io.BytesIO(client.get("/certificates/schools/junior.zip").data)) as z:
        assert sorted(n.split("-social")[0] for n in z.namelist()) == ["bo-both", "jo-junior"]
    assert client.get("/certificates/schools/nursery.zip").status_code == 404


def test_the_zip_reads_each_pdf_only_when_its_turn_comes(app, schools):
    with app.app_context():
        engine = db.engine
    reads: list[str] = []

    def spy(conn, cursor, statement, *args):
        if statement.startswith("SELECT certificate.pdf, "):  # with its digest, to check it
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        client = client_for(app, schools["gus"])
        response = client.get("/certificates/schools/infant.zip", buffered=False)
        assert int(response.headers["Content-Length"]) > 0 and reads == []
        seen = []
        body = b""
        for chunk in response.response:
            seen.append(len(reads))
            body += chunk
        response.close()
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert seen[0] <= 1 and seen[-1] == 3 and len(body) == int(response.headers["Content-Length"])


def _zip_statements(app, pid, school) -> list[str]:
    """Every statement the database runs while a school's ZIP is downloaded to its end."""
    with app.app_context():
        engine = db.engine
    statements: list[str] = []

    def spy(conn, cursor, statement, *args):
        if not statement.startswith("BEGIN"):  # SQLite's, as each file's read begins
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        with client_for(app, pid).get(f"/certificates/schools/{school}.zip") as response:
            assert response.status_code == 200 and zipfile.ZipFile(io.BytesIO(response.data))
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    return statements


def test_the_zip_checks_its_certificates_against_the_audit_chain_in_one_pass(app, schools):
    """One certificate more costs one query more, reading its PDF: every stored PDF is checked
    against its digest and the audit chain once, for all of them, not one certificate at a time."""
    three = _zip_statements(app, schools["gus"], "infant")
    two = _zip_statements(app, schools["gus"], "junior")
    assert len(three) - len(two) == 1, (len(three), len(two))

    def chain_reads(statements):
        return [s for s in statements if "FROM audit_event" in s]

    assert len(chain_reads(three)) == len(chain_reads(two)) > 0


def _zip_with_a_pdf_changed_after_the_check(app, schools, values) -> tuple[int, bytes, Exception]:
    """Download the infant ZIP; once the first PDF is sent, change Ian's certificate (sent
    last) as someone with the database's rights could; return its id, what was sent and the
    error that ended the download."""
    with app.app_context():
        engine = db.engine
        ian = db.session.scalar(
            select(Certificate.id).where(Certificate.person_id == schools["ian"])
        )
    reads: list[str] = []

    def spy(conn, cursor, statement, *args):
        if statement.startswith("SELECT certificate.pdf, "):
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    body = b""
    try:
        response = client_for(app, schools["gus"]).get(
            "/certificates/schools/infant.zip", buffered=False
        )
        assert response.status_code == 200
        chunks = iter(response.response)
        while not reads:  # the first PDF's read has ended (committed) when its bytes come
            body += next(chunks)
        with Session(engine) as session, session.begin():
            with evidence_guard_off(session, "certificate"):
                session.execute(update(Certificate).where(Certificate.id == ian).values(values))
        with pytest.raises(certificates.issuing.PdfNotAsDigested) as raised:
            for chunk in chunks:
                body += chunk
        response.close()
        assert engine.pool.checkedout() == 0  # the refused read's connection went back
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    return ian, body, raised.value


FORGED = b"%PDF-1.4 forged: never trained"


@pytest.mark.parametrize(
    "values",
    [
        {"pdf": FORGED},
        {"pdf": FORGED, "pdf_sha256": hashlib.sha256(FORGED).hexdigest()},
    ],
    ids=["bytes", "bytes-and-digest"],
)
def test_a_pdf_changed_after_the_zip_was_checked_is_never_sent(app, schools, values, caplog):
    ian, body, error = _zip_with_a_pdf_changed_after_the_check(app, schools, values)
    assert error.certificate_id == ian and b"forged" not in body
    assert f"certificate {ian}: " in caplog.text and "not served" in caplog.text


def test_a_zip_with_a_certificate_the_chain_does_not_record_is_refused_before_a_byte(
    app, schools, caplog
):
    """A PDF and its digest replaced together match each other but not the audit chain: the
    whole ZIP is refused with an error page, not broken off halfway."""
    with app.app_context():
        with evidence_guard_off(db.session, "certificate"):
            db.session.execute(
                update(Certificate)
                .where(Certificate.person_id == schools["ian"])
                .values(pdf=FORGED, pdf_sha256=hashlib.sha256(FORGED).hexdigest())
            )
        db.session.commit()
    response = client_for(app, schools["gus"]).get("/certificates/schools/infant.zip")
    assert response.status_code == 500 and b"cannot be downloaded" in response.data
    assert b"forged" not in response.data
    assert "not as the audit log records them; not served" in caplog.text


def test_a_certificate_that_cannot_be_rendered_is_named_not_left_out(app, schools, monkeypatch):
    def broken(certificate):
        raise OSError("fonts missing")

    with app.app_context():
        with evidence_guard_off(db.session, "certificate"):
            db.session.execute(
                update(Certificate)
                .where(Certificate.person_id == schools["jo"])
                .values(pdf=None, pdf_sha256=None)
            )
        db.session.commit()
    monkeypatch.setattr(certificates.issuing, "render", broken)
    with client_for(app, schools["gus"]).get("/certificates/schools/junior.zip") as response:
        body = response.data  # closed as a server closes it, ending the request
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert sorted(n.split("-social")[0] for n in archive.namelist()) == [
            "bo-both", "not-included.txt"
        ]  # fmt: skip
        assert (
            "Jo Junior: Social Media Policy, version 1.0"
            in archive.read("not-included.txt").decode()
        )


def test_governors_slt_and_admins_find_the_school_files_others_do_not(app, schools):
    page = client_for(app, schools["gus"]).get("/certificates/")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'href="/certificates/"' in text  # in the navigation
    assert "Ladysmith Infant School" in text and 'href="/certificates/schools/infant.zip"' in text
    assert "ZIP of 3 certificates" in text and "ZIP of 2 certificates" in text
    staff = client_for(app, schools["ann"])
    assert 'href="/certificates/"' not in staff.get("/").get_data(as_text=True)
    assert staff.get("/certificates/").status_code == 403
    assert staff.get("/certificates/schools/infant.zip").status_code == 403
    assert app.test_client().get("/certificates/schools/infant.zip").status_code == 302


def test_names_are_printed_as_text_and_the_renderer_fetches_nothing(app, make_person):
    pid = make_person("staff", name='Ann <img src="file:///etc/hostname"> Smith')
    train_people(app, pid)
    issue_everything(app)
    assert 'Ann <img src="file:///etc/hostname"> Smith' in pdf_text(the_certificate(app, pid).pdf)
    for url in ("file:///etc/hostname", "http://example.invalid/logo.png"):
        with pytest.raises(FatalURLFetchingError):
            HTML(string=f'<img src="{url}">', url_fetcher=NoFetching()).write_pdf()
