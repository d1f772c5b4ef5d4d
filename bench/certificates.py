"""Benchmark: rendering a certificate against a bare WeasyPrint page, and a school's ZIP.

- One certificate rendered (HTML → PDF/A-3b with its QR code) against WeasyPrint rendering a bare
  A4 page of the same text (each line of the certificate, as pdftotext reads it, in a plain
  paragraph): medians of 15 warm renders, interleaved.
- The ZIP of a school's 1,000 issued certificates, streamed to the end through the app, in process.
  The 1,000 stored PDFs are copies of one real rendered certificate, each its own row.
Builds its database in a temporary directory, talks to nothing, stops by itself.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ZIP_CERTIFICATES = 1000


def main() -> None:
    from sqlalchemy import func, insert, select
    from weasyprint import HTML

    from app import create_app
    from audit.log import record_evidence
    from certificates.issuing import issue_due, new_code
    from certificates.models import Certificate
    from certificates.render import render_pdf
    from core.db import db, utcnow, writing
    from core.migrate import upgrade
    from people.models import Person, PersonRole, PersonSchool
    from people.service import set_password
    from tests.conftest import train_people
    from training.cli import publish_all
    from training.models import Acknowledgement

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-certificates-"))
    try:
        url = f"sqlite:///{workdir / 'certificates.db'}"
        app = create_app(
            {"DATABASE_URL": url, "SECRET_KEY": "bench", "WTF_CSRF_ENABLED": False, "MFA_ROLES": ""}
        )
        with app.app_context():
            upgrade()
            publish_all()
            s = db.session
            person = Person(name="Alexandra Featherstonehaugh", email="alex@bench.example")
            person.role_rows = [PersonRole(role="staff")]
            person.school_rows = [PersonSchool(school="infant")]
            governor = Person(name="Bench Governor", email="governor@bench.example")
            governor.role_rows = [PersonRole(role="governor")]
            set_password(governor, "bench password 123")
            s.add_all([person, governor])
            s.commit()
            pid = person.id
        train_people(app, pid)
        with app.app_context():
            s = db.session
            with writing(s):
                [certificate] = issue_due(s, [pid])
            pdf = render_pdf(certificate)
            (workdir / "certificate.pdf").write_bytes(pdf)
            text = subprocess.run(
                ["pdftotext", str(workdir / "certificate.pdf"), "-"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            bare_html = "<!doctype html><html><body>" + "".join(
                f"<p>{line}</p>" for line in text.splitlines() if line.strip()
            ) + "</body></html>"  # fmt: skip
            certificate_ms, bare_ms = [], []
            for _ in range(3):  # warm both
                render_pdf(certificate)
                HTML(string=bare_html).write_pdf()
            for _ in range(15):
                start = time.perf_counter()
                render_pdf(certificate)
                certificate_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                HTML(string=bare_html).write_pdf()
                bare_ms.append((time.perf_counter() - start) * 1000)

            # 1,000 people of the school, each with an issued certificate.
            now = utcnow()
            s.execute(
                insert(Person),
                [{"name": f"Person {n}", "email": f"p{n}@bench.example", "active": True,
                  "auth_version": 1, "created_at": now} for n in range(ZIP_CERTIFICATES)],
            )  # fmt: skip
            ids = list(s.scalars(select(Person.id).where(Person.email.like("p%@bench.example"))))
            s.execute(insert(PersonSchool), [{"person_id": i, "school": "infant"} for i in ids])
            template = certificate
            first = (s.scalar(select(func.max(Acknowledgement.id))) or 0) + 1
            acks = {i: first + n for n, i in enumerate(ids)}
            s.execute(
                insert(Acknowledgement),
                [{"id": acks[i], "person_id": i, "policy_version_id": template.policy_version_id,
                  "seq": 0, "declaration": "d", "typed_name": f"Person {i}", "at": now,
                  "ip": "127.0.0.1", "user_agent": "bench"} for i in ids],
            )  # fmt: skip
            s.execute(
                insert(Certificate),
                [{"code": new_code(), "person_id": i, "policy_id": template.policy_id,
                  "policy_version_id": template.policy_version_id, "acknowledgement_id": acks[i],
                  "issued_at": now, "valid_until": template.valid_until,
                  "person_name": f"Person {i}", "policy_title": template.policy_title,
                  "version_label": template.version_label, "module_titles": template.module_titles,
                  "federation_name": template.federation_name, "pdf": pdf,
                  "pdf_sha256": hashlib.sha256(pdf).hexdigest()} for i in ids],
            )  # fmt: skip
            # Issued as the app issues them: each row recorded in the audit chain, which a
            # download checks before serving the stored PDF.
            copies = s.scalars(select(Certificate.id).where(Certificate.person_id.in_(ids)))
            record_evidence(s, "certificate.issued", "certificate", list(copies))
            s.commit()
        client = app.test_client()
        client.post(
            "/sign-in", data={"email": "governor@bench.example", "password": "bench password 123"}
        )
        start = time.perf_counter()
        response = client.get("/certificates/schools/infant.zip", buffered=False)
        size = sum(len(chunk) for chunk in response.response)
        zip_s = time.perf_counter() - start
        response.close()
        assert response.status_code == 200 and size == int(response.headers["Content-Length"])
        with app.app_context():
            db.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cert, bare = statistics.median(certificate_ms), statistics.median(bare_ms)
    print("certificates, SQLite, in process")
    print(f"bare WeasyPrint page, same text:   {bare:6.1f} ms (median of 15)")
    print(f"one certificate (PDF/A-3b, QR):    {cert:6.1f} ms   ratio {cert / bare:.2f} "
          "(target <= 1.5)")  # fmt: skip
    print(f"ZIP of {ZIP_CERTIFICATES + 1:,} certificates ({size / 1e6:.1f} MB), streamed: "
          f"{zip_s:.2f} s (target < 3 s)")  # fmt: skip


if __name__ == "__main__":
    main()
