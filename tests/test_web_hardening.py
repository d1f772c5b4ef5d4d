"""Web hardening: evidence-pack rendering, host checks, cookies and file permissions."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[http.server.HTTPServer]:
    """A listener on 127.0.0.1 that counts every request it gets: nothing should reach it."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Sink)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- F14: the evidence pack fetches nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    "markup",
    [
        '<link rel="stylesheet" href="{base}/style.css">',
        '<img src="{base}/img.png">',
        '<style>@import url("{base}/import.css");</style>',
        '<p style="background: url({base}/bg.png)">x</p>',
        '<link rel="stylesheet" href="file://{secret}">',
        '<img src="file:///etc/passwd">',
        '<img src="/relative.png">',
    ],
)
def test_evidence_pack_renderer_fetches_no_url_and_no_file(app, sink, tmp_path, markup):
    from weasyprint.urls import FatalURLFetchingError

    from reports.views import pack_pdf

    secret = tmp_path / "secret.css"
    secret.write_text("body { color: red }")
    html = markup.format(base=f"http://127.0.0.1:{sink.server_port}", secret=secret)
    with app.app_context(), pytest.raises(FatalURLFetchingError) as refused:
        pack_pdf(html + "<p>Evidence</p>", app.config["BASE_URL"])
    # Refused by the renderer's own fetcher before anything was opened or requested.
    assert "fetch nothing" in str(refused.value.__cause__)
    assert sink.hits == []


@pytest.mark.usefixtures("published")
def test_evidence_pack_prints_payloads_as_text_and_fetches_nothing(app, auth, make_person, sink):
    base = f"http://127.0.0.1:{sink.server_port}"
    payload = f'<img src="{base}/name.png"><link rel=stylesheet href="{base}/x.css">'
    make_person("staff", name=payload, schools=("infant",))
    client = auth.as_person(make_person("governor", password=PASSWORD))
    response = client.get("/reports/schools/infant/evidence.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert sink.hits == []
