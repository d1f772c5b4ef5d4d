"""The certificate as a PDF/A-3b document: autoescaped Jinja → WeasyPrint → bytes.

Everything the page shows is inside the HTML: the QR code is a small PNG in a ``data:`` URI and
the fonts are the system's DejaVu faces, found by fontconfig and embedded by WeasyPrint. So the
renderer fetches nothing, and refuses to: a template that pointed at a URL would fail rather than
reach out.

A certificate is rendered as someone signs, so it is kept quick: the stylesheet is parsed once,
the fonts are loaded once per process, the QR code is a handful of pixels rather than thousands of
vector paths, and the page is a few plain blocks of text in one face.
"""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from importlib.resources import files
from io import BytesIO
from typing import Any

import segno
from flask import current_app, has_request_context
from PIL import Image
from weasyprint import CSS, HTML
from weasyprint.css import ColorProfile
from weasyprint.document import Document
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

from certificates.models import Certificate
from core.web import external_url, format_date

log = logging.getLogger("countersign.certificates")

TEMPLATE = "certificates/certificate.html"
STYLESHEET_BLOCK = "stylesheet"  # the template's block holding the page's CSS
PDF_VARIANT = "pdf/a-3b"  # archival: fonts embedded, colours in a declared sRGB space
QR_ERROR = "m"  # recovers from 15% damage: a folded or worn printout still scans
QR_BORDER = 4  # the quiet zone the QR standard asks for, in modules
QR_MASK = 0  # every mask is valid and scans; fixing one spares scoring all eight each time

# PDF/A declares the colour space it was made for. WeasyPrint's own sRGB output intent opens its
# ICC file and never closes it (a ResourceWarning on every render), so the same profile is read
# once here and handed over under a name of our own.
_SRGB_ICC = files("weasyprint.pdf").joinpath("sRGB2014.icc").read_bytes()
OUTPUT_INTENT = "countersign-srgb"

# Loading the fonts into a fresh font configuration takes longer than laying the page out, so the
# process keeps one and renders with it one certificate at a time. It is let go at exit, while the
# libraries it lives in are still loaded (let go later, it crashes the interpreter on its way
# out), and a forked worker starts afresh.
_fonts: FontConfiguration | None = None
_fonts_lock = threading.Lock()


def _forget_fonts() -> None:
    global _fonts, _fonts_lock
    _fonts, _fonts_lock = None, threading.Lock()


atexit.register(_forget_fonts)
os.register_at_fork(after_in_child=_forget_fonts)


class NoFetching(URLFetcher):
    """Certificates fetch nothing: not a stylesheet, a font, an image or a local file. Only a
    ``data:`` URI, whose content is already in the page, is read."""

    def __init__(self) -> None:
        super().__init__(allowed_protocols={"data"}, fail_on_errors=True)

    def fetch(self, url: str, headers: Any = None) -> Any:
        if not url.startswith("data:"):
            raise ValueError(f"certificates fetch nothing, refused {url[:100]!r}")
        return super().fetch(url, headers)


_NO_FETCHING = NoFetching()  # one for every certificate: making one costs more than using it


def verification_url(code: str) -> str:
    """The absolute address printed on the certificate and in its QR code, on BASE_URL."""
    if has_request_context():
        return external_url("certificates.verify", code=code)
    with current_app.test_request_context():  # from the CLI: no request to build a path in
        return external_url("certificates.verify", code=code)


_GREY = bytes.maketrans(b"\x00\x01", b"\xff\x00")  # light module → white, dark → black


def qr_code(url: str) -> segno.QRCode:
    return segno.make(url, error=QR_ERROR, mask=QR_MASK)


def qr_png(url: str) -> str:
    """The QR code for ``url`` as a PNG ``data:`` URI: one grey pixel per module, quiet zone
    included. The page scales it up with ``image-rendering: pixelated``, which the PDF passes on
    as "do not interpolate": every module prints as a sharp black or white square."""
    matrix = qr_code(url).matrix  # rows of 1 (dark) and 0 (light)
    side = len(matrix) + 2 * QR_BORDER
    quiet_rows, quiet_side = b"\xff" * side * QR_BORDER, b"\xff" * QR_BORDER
    pixels = b"".join(quiet_side + bytes(row).translate(_GREY) + quiet_side for row in matrix)
    png = BytesIO()
    Image.frombytes("L", (side, side), quiet_rows + pixels + quiet_rows).save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")


def certificate_html(certificate: Certificate) -> str:
    """The certificate's HTML, without its stylesheet (see :func:`stylesheet`)."""
    url = verification_url(certificate.code)
    template = current_app.jinja_env.get_template(TEMPLATE)
    return template.render(
        c=certificate,
        verify_url=url,
        qr=qr_png(url),
        issued=format_date(certificate.issued_at),
        valid_until=format_date(certificate.valid_until),
        created=certificate.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def stylesheet() -> CSS:
    """The certificate's stylesheet, from the template's ``stylesheet`` block, parsed once (and
    again only if the template changes)."""
    template = current_app.jinja_env.get_template(TEMPLATE)
    return _parsed("".join(template.blocks[STYLESHEET_BLOCK](template.new_context())))


@functools.lru_cache(maxsize=2)
def _parsed(css: str) -> CSS:
    return CSS(string=css, url_fetcher=_NO_FETCHING)


def certificate_document(
    certificate: Certificate, font_config: FontConfiguration | None = None
) -> Document:
    """The certificate laid out on its page. Needs an app context (templates, time zone,
    BASE_URL). Without ``font_config`` the fonts are loaded afresh."""
    html = HTML(string=certificate_html(certificate), url_fetcher=_NO_FETCHING)
    srgb = ColorProfile(BytesIO(_SRGB_ICC), "sRGB2014.icc", "relative-colorimetric",
                        (["r"], ["g"], ["b"]))  # fmt: skip
    return html.render(
        font_config=font_config,
        stylesheets=[stylesheet()],
        pdf_variant=PDF_VARIANT,
        output_intent=OUTPUT_INTENT,
        color_profiles={OUTPUT_INTENT: srgb},
    )


def render_pdf(certificate: Certificate) -> bytes:
    """Render the certificate, one at a time with the process's fonts. Needs an app context
    (templates, time zone, BASE_URL)."""
    global _fonts
    with _fonts_lock:
        if _fonts is None:
            _fonts = FontConfiguration()
        document = certificate_document(certificate, _fonts)
        return document.write_pdf(pdf_variant=PDF_VARIANT, output_intent=OUTPUT_INTENT)


@dataclass(frozen=True)
class Rendered:
    pdf: bytes
    sha256: str


def render(certificate: Certificate) -> Rendered:
    pdf = render_pdf(certificate)
    return Rendered(pdf, hashlib.sha256(pdf).hexdigest())
