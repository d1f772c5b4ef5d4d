"""training: one status store and one outbox

- ``stored_status`` (training) replaces the API's ``precomputed_status``: the rule's answer in
  typed columns, with the modules and what is missing as structured JSON, not the API's wire
  format. It is derived: it starts empty and the worker's sweep fills it.
- ``outbox`` is the one queue of things to do after a commit (status-change events, webhook
  deliveries, certificate rendering, ...), with the record of every attempt on the message itself.
  Webhook deliveries, LMS score posts and xAPI statements move into it (undelivered ones stay
  due), and their own tables go; ``status_snapshot``, the webhooks' own copy of each person's last announced status,
  goes too: ``stored_status`` is that record now.
- A quiz attempt now bumps its person's ``status_rev`` too, so the tables whose changes make a
  stored answer stop counting are exactly the tables the rule reads (``tests/test_status_store.py``
  derives both sets from the code and the database). The rule reads an attempt only through its
  submission, so this costs one recomputation when a quiz starts.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 15:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE person SET status_rev = status_rev + 1 WHERE id = {row}.person_id"


def _attempt_triggers(postgresql: bool) -> list[str]:
    if postgresql:
        return [
            f"""CREATE FUNCTION quiz_attempt_status_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN {_BUMP.format(row="OLD")}; END IF;
    IF TG_OP <> 'DELETE' THEN {_BUMP.format(row="NEW")}; END IF;
    RETURN NULL;
END $$""",
            "CREATE TRIGGER quiz_attempt_status_rev AFTER INSERT OR UPDATE OR DELETE ON "
            "quiz_attempt FOR EACH ROW EXECUTE FUNCTION quiz_attempt_status_rev()",
        ]
    rows = {"INSERT": ["NEW"], "UPDATE": ["OLD", "NEW"], "DELETE": ["OLD"]}
    return [
        f"CREATE TRIGGER quiz_attempt_status_rev_{event.lower()} AFTER {event} ON quiz_attempt "
        f"FOR EACH ROW BEGIN {'; '.join(_BUMP.format(row=n) for n in names)}; END"
        for event, names in rows.items()
    ]


def upgrade() -> None:
    op.create_table(
        "stored_status",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("person_rev", sa.Integer(), nullable=False),
        sa.Column("policy_rev", sa.Integer(), nullable=False),
        sa.Column("policy_version_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("standing", sa.String(length=20), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("valid_until", core.db.UTCDateTime(), nullable=True),
        sa.Column("acknowledged_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("acknowledgement_id", sa.Integer(), nullable=True),
        sa.Column("expired_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("changes_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("modules", sa.JSON(), nullable=False),
        sa.Column("missing", sa.JSON(), nullable=False),
        sa.Column("fresh_until", core.db.UTCDateTime(), nullable=True),
        sa.Column("computed_at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_stored_status_person_id_person"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["policy.id"],
            name=op.f("fk_stored_status_policy_id_policy"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_version_id"],
            ["policy_version.id"],
            name=op.f("fk_stored_status_policy_version_id_policy_version"),
        ),
        sa.PrimaryKeyConstraint("person_id", "policy_id", name=op.f("pk_stored_status")),
    )
    with op.batch_alter_table("stored_status", schema=None) as batch_op:
        batch_op.create_index(
            "ix_stored_status_policy_standing", ["policy_id", "standing"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=60), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=True),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("due_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_until", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("done_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_outbox_person_id_person"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("key", name=op.f("uq_outbox_key")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_due", ["done_at", "gave_up_at", "due_at"], unique=False)
        batch_op.create_index("ix_outbox_topic", ["topic", "id"], unique=False)

    # Webhook deliveries, delivered or not, move into the outbox with their record of attempts.
    bind = op.get_bind()
    outbox = sa.table(
        "outbox", sa.column("payload", sa.JSON()), *(sa.column(c) for c in (
            "topic", "key", "person_id", "created_at", "due_at", "attempts",
            "last_attempt_at", "last_status", "last_error", "done_at", "gave_up_at")),
    )  # fmt: skip
    rows = bind.execute(sa.text(
        "SELECT id, webhook_id, event_id, payload, created_at, attempts, next_attempt_at, "
        "last_attempt_at, last_status, last_error, delivered_at, gave_up_at "
        "FROM webhook_delivery ORDER BY id"
    )).all()  # fmt: skip
    moved = []
    for (did, hook, event_id, payload, created, attempts, due, last_at, last_status, error,
         delivered, gave_up) in rows:  # fmt: skip
        payload = json.loads(payload) if isinstance(payload, str) else payload
        person = ((payload.get("data") or {}).get("person") or {}).get("id")
        moved.append({
            "topic": "webhook", "key": f"webhook:{hook}:{event_id}:{did}", "person_id": person,
            "payload": {"webhook_id": hook, "event": payload}, "created_at": created,
            "due_at": due, "attempts": attempts, "last_attempt_at": last_at,
            "last_status": last_status, "last_error": error, "done_at": delivered,
            "gave_up_at": gave_up,
        })  # fmt: skip
    # Score posts, with the person their link belongs to (for the personal-data download).
    posts = bind.execute(sa.text(
        "SELECT p.id, p.link_id, l.person_id, p.score, p.activity_progress, p.grading_progress, "
        "p.created_at, p.attempts, p.next_attempt_at, p.last_attempt_at, p.last_status, "
        "p.last_error, p.sent_at, p.gave_up_at FROM lti_score_post p "
        "JOIN lti_grade_link l ON l.id = p.link_id ORDER BY p.id"
    )).all()  # fmt: skip
    for (pid, link, person, score, activity, grading, created, attempts, due, last_at, status,
         error, sent, gave_up) in posts:  # fmt: skip
        moved.append({
            "topic": "lti.score", "key": f"lti.score:{pid}", "person_id": person,
            "payload": {"link_id": link, "score": score, "activity": activity, "grading": grading,
                        "at": str(created)},
            "created_at": created, "due_at": due, "attempts": attempts, "last_attempt_at": last_at,
            "last_status": status, "last_error": error, "done_at": sent, "gave_up_at": gave_up,
        })  # fmt: skip
    # xAPI statements: the event each reports is the message's unique key.
    statements = bind.execute(sa.text(
        "SELECT statement_id, event_key, person_id, verb, payload, created_at, next_attempt_at, "
        "attempts, last_attempt_at, last_status, last_error, sent_at, gave_up_at "
        "FROM xapi_statement ORDER BY id"
    )).all()  # fmt: skip
    for (statement_id, event_key, person, verb, payload, created, due, attempts, last_at, status,
         error, sent, gave_up) in statements:  # fmt: skip
        payload = json.loads(payload) if isinstance(payload, str) else payload
        moved.append({
            "topic": "xapi.statement", "key": f"xapi.statement:{event_key}", "person_id": person,
            "payload": {"statement_id": statement_id, "verb": verb, "statement": payload},
            "created_at": created, "due_at": due, "attempts": attempts, "last_attempt_at": last_at,
            "last_status": status, "last_error": error, "done_at": sent, "gave_up_at": gave_up,
        })  # fmt: skip
    if moved:
        op.bulk_insert(outbox, moved)  # type: ignore[arg-type]
    op.drop_index("ix_xapi_statement_person", table_name="xapi_statement")
    op.drop_index("ix_xapi_statement_due", table_name="xapi_statement")
    op.drop_table("xapi_statement")
    op.drop_table("lti_score_post")
    op.drop_table("webhook_delivery")
    op.drop_table("status_snapshot")
    op.drop_table("precomputed_status")

    for statement in _attempt_triggers(bind.dialect.name == "postgresql"):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION quiz_attempt_status_rev() CASCADE")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER quiz_attempt_status_rev_{event}")
    op.create_table(
        "precomputed_status",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("person_rev", sa.Integer(), nullable=False),
        sa.Column("policy_rev", sa.Integer(), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("standing", sa.String(length=20), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("valid_until", core.db.UTCDateTime(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("fresh_until", core.db.UTCDateTime(), nullable=True),
        sa.Column("computed_at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_precomputed_status_person_id_person"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["policy.id"],
            name=op.f("fk_precomputed_status_policy_id_policy"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", "policy_id", name=op.f("pk_precomputed_status")),
    )
    op.create_table(
        "status_snapshot",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("at", core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"], ["person.id"], name=op.f("fk_status_snapshot_person_id_person")
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"], ["policy.id"], name=op.f("fk_status_snapshot_policy_id_policy")
        ),
        sa.PrimaryKeyConstraint("person_id", "policy_id", name=op.f("pk_status_snapshot")),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("last_attempt_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"], ["webhook.id"], name=op.f("fk_webhook_delivery_webhook_id_webhook")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_delivery_due", ["delivered_at", "next_attempt_at"], unique=False
        )
    op.create_table(
        "lti_score_post",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("activity_progress", sa.String(length=20), nullable=False),
        sa.Column("grading_progress", sa.String(length=20), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("last_attempt_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("sent_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["lti_grade_link.id"],
            name=op.f("fk_lti_score_post_link_id_lti_grade_link"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lti_score_post")),
    )
    with op.batch_alter_table("lti_score_post", schema=None) as batch_op:
        batch_op.create_index("ix_lti_score_post_due", ["sent_at", "next_attempt_at"], unique=False)
    op.create_table(
        "xapi_statement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("statement_id", sa.String(length=36), nullable=False),
        sa.Column("event_key", sa.String(length=120), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("verb", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", core.db.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("sent_at", core.db.UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], name=op.f("fk_xapi_statement_person_id_person"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_xapi_statement")),
        sa.UniqueConstraint("event_key", name=op.f("uq_xapi_statement_event_key")),
        sa.UniqueConstraint("statement_id", name=op.f("uq_xapi_statement_statement_id")),
    )
    op.create_index("ix_xapi_statement_due", "xapi_statement", ["sent_at", "gave_up_at", "next_attempt_at"])
    op.create_index("ix_xapi_statement_person", "xapi_statement", ["person_id"])
    op.drop_table("outbox")
    op.drop_table("stored_status")
