"""Policies, module versions, reading, acknowledgement, and the training-status rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask


def init_app(app: Flask) -> None:
    """Load the federation's content (``core.web.federation()`` reads it back), and register the
    learner's pages and ``flask content``, ``flask db`` and ``flask setup``."""
    from people.personal_data import register_personal_data
    from training import privacy, status_store
    from training.cli import content_cli, db_cli, setup_command
    from training.loader import load_federation
    from training.views import training_bp

    app.extensions["countersign.federation"] = load_federation(Path(app.config["CONTENT_DIR"]))

    @app.context_processor
    def _federation() -> dict[str, Any]:
        return {"federation": app.extensions["countersign.federation"]}

    app.register_blueprint(training_bp)
    app.cli.add_command(db_cli)
    app.cli.add_command(content_cli)
    app.cli.add_command(setup_command)
    status_store.init_app(app)  # the status store, kept after every commit that touches people
    register_personal_data(
        app, "stored_answers", tables=("stored_status",), erase=privacy.erase_stored_answers,
        order=70,
    )  # fmt: skip
    # Visits, reads and signatures are kept under the pseudonymous id after erasure: they are the
    # evidence. Only what the signer typed, and where from, goes.
    register_personal_data(
        app, "module_visits", tables=("module_visit",), export=privacy.module_visits, order=10
    )
    register_personal_data(
        app, "read_receipts", tables=("read_receipt",), export=privacy.read_receipts, order=20
    )
    register_personal_data(
        app, "acknowledgements", tables=("acknowledgement",), export=privacy.acknowledgements,
        erase=privacy.erase_acknowledgements, evidence=privacy.acknowledgements_to_pseudonymise,
        order=80,
    )  # fmt: skip
