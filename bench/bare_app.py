"""The floor: a bare Flask JSON endpoint, served the same way as Countersign."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify({"ok": True})
