"""The floor: a bare Flask JSON endpoint, served the same way as Countersign."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return jsonify({"ok": True})


@app.get("/ping/<int:n>")
def ping_n(n: int):  # type: ignore[no-untyped-def]
    """The same, at a path with a number in it: loaded by the same wrk script as the API."""
    return jsonify({"ok": True, "n": n})
