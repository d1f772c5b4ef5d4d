"""evidence: one way to erase, certificates' bytes checked, no replace

Migration 0011's erasure marker opened a person's evidence rows to whoever could insert it, and to
any change of the personal columns. From here:

- the marker opens a person's rows only to the exact pseudonymised values erasure writes: an
  acknowledgement's typed name, address and browser become empty; a certificate's name becomes
  the pseudonym (``people.privacy.pseudonym``) and its PDF and PDF digest become empty, never a
  new value. Decisions' free text (a name written into a reason) cannot be pinned to one value;
  ``flask audit verify`` reports any such change the chain does not record.
- on PostgreSQL the application role may no longer write ``evidence_erasure``: erasure opens and
  closes a person's rows through ``countersign_erasure_begin(person_id)`` and
  ``countersign_erasure_end(person_id)``, owned by the schema owner (SECURITY DEFINER, fixed
  search path), and begin refuses anyone but a deactivated, not yet erased person. A deferred
  constraint trigger refuses to commit a transaction that leaves a marker behind, so a marker
  never outlives the transaction that set it.
- on SQLite an INSERT naming the id of an existing evidence row is refused: ``INSERT OR REPLACE``
  (and ``REPLACE INTO``) would otherwise delete and re-insert the row without firing the
  no-delete trigger. On PostgreSQL ``INSERT … ON CONFLICT DO UPDATE`` fires the update guard.
- audit rows are indexed by subject, so the latest digest recorded for one row is found without
  reading the whole chain (storing a certificate's PDF checks it first).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "is evidence: rows cannot be changed or removed"

# The evidence tables' key columns as of this revision (acknowledgement_module has no id).
KEYS: dict[str, tuple[str, ...]] = {
    "acknowledgement": ("id",),
    "acknowledgement_module": ("acknowledgement_id", "module_version_id"),
    "read_receipt": ("id",),
    "quiz_attempt": ("id",),
    "quiz_submission": ("id",),
    "application_decision": ("id",),
    "certificate": ("id",),
}
# Every column of the two tables whose guard changes here (SQLite compares them one by one).
COLUMNS: dict[str, tuple[str, ...]] = {
    "acknowledgement": (
        "id", "person_id", "policy_version_id", "seq", "declaration", "typed_name", "at", "ip",
        "user_agent",
    ),
    "certificate": (
        "id", "code", "person_id", "policy_id", "policy_version_id", "acknowledgement_id",
        "issued_at", "valid_until", "person_name", "policy_title", "version_label",
        "module_titles", "federation_name", "pdf", "pdf_sha256",
    ),
}  # fmt: skip

MARKED = "EXISTS (SELECT 1 FROM evidence_erasure WHERE person_id = OLD.person_id)"
NOT_ERASED = (
    "NOT EXISTS (SELECT 1 FROM person WHERE person.id = OLD.person_id "
    "AND person.erased_at IS NOT NULL)"
)
PDF_STORED = (
    "OLD.pdf IS NULL AND OLD.pdf_sha256 IS NULL AND NEW.pdf IS NOT NULL "
    f"AND NEW.pdf_sha256 IS NOT NULL AND {NOT_ERASED}"
)
# What erasure writes, exactly (``people.privacy.erase_person`` and ``pseudonym``).
ACK_ERASED = "NEW.typed_name = '' AND NEW.ip = '' AND NEW.user_agent = ''"
CERTIFICATE_ERASED = (
    "NEW.person_name = 'Erased person #' || OLD.person_id "
    "AND NEW.pdf IS NULL AND NEW.pdf_sha256 IS NULL"
)

# (condition, the columns that may change under it), any one of them.
ALLOWED: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "acknowledgement": [(f"{MARKED} AND {ACK_ERASED}", ("typed_name", "ip", "user_agent"))],
    "certificate": [
        (f"{MARKED} AND {CERTIFICATE_ERASED}", ("person_name", "pdf", "pdf_sha256")),
        (PDF_STORED, ("pdf", "pdf_sha256")),
    ],
}
# Migration 0011's conditions, for downgrading.
ALLOWED_0011: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "acknowledgement": [(MARKED, ("typed_name", "ip", "user_agent"))],
    "certificate": [
        (MARKED, ("person_name", "pdf", "pdf_sha256")),
        (PDF_STORED, ("pdf", "pdf_sha256")),
    ],
}

FUNCTIONS = ("countersign_erasure_begin(integer)", "countersign_erasure_end(integer)")


def _sqlite_unchanged(table: str, changing: tuple[str, ...]) -> str:
    return " AND ".join(f'NEW."{c}" IS OLD."{c}"' for c in COLUMNS[table] if c not in changing)


def _postgresql_unchanged(changing: tuple[str, ...]) -> str:
    names = ", ".join(f"'{c}'" for c in changing)
    return f"(to_jsonb(NEW) - ARRAY[{names}]) = (to_jsonb(OLD) - ARRAY[{names}])"


def _allowed(table: str, cases: list[tuple[str, tuple[str, ...]]], postgresql: bool) -> str:
    return " OR ".join(
        f"({condition} AND "
        f"{_postgresql_unchanged(changing) if postgresql else _sqlite_unchanged(table, changing)})"
        for condition, changing in cases
    )


def _guards(allowed: dict[str, list[tuple[str, tuple[str, ...]]]], postgresql: bool) -> list[str]:
    statements = []
    for table, cases in allowed.items():
        condition = _allowed(table, cases, postgresql)
        if postgresql:
            statements.append(
                f"""CREATE OR REPLACE FUNCTION {table}_guard() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF {condition} THEN RETURN NEW; END IF;
                  RAISE EXCEPTION '% {REFUSAL}', TG_TABLE_NAME;
                END $$"""
            )
        else:
            statements += [
                f"DROP TRIGGER {table}_no_update",
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} WHEN NOT "
                f"({condition}) BEGIN SELECT RAISE(ABORT, '{table} {REFUSAL}'); END",
            ]
    return statements


def _sqlite_no_replace() -> list[str]:
    statements = []
    for table, keys in KEYS.items():
        same = " AND ".join(f"{k} = NEW.{k}" for k in keys)
        statements.append(
            f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {same}) "
            f"BEGIN SELECT RAISE(ABORT, '{table} {REFUSAL}'); END"
        )
    return statements


def _postgresql_erasure(schema: str) -> list[str]:
    # SECURITY DEFINER runs as the owner, so the search path is fixed (the schema, then pg_temp
    # last) and nobody's own objects can stand in for these tables.
    header = "RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = {}, pg_temp AS"
    header = header.format(schema)
    return [
        f"""CREATE FUNCTION countersign_erasure_begin(erased integer) {header} $$
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM person WHERE id = erased AND NOT active
                         AND deactivated_at IS NOT NULL AND erased_at IS NULL) THEN
            RAISE EXCEPTION 'person % is not a leaver whose data may be erased', erased;
          END IF;
          INSERT INTO evidence_erasure (person_id) VALUES (erased);
        END $$""",
        f"""CREATE FUNCTION countersign_erasure_end(erased integer) {header} $$
        BEGIN DELETE FROM evidence_erasure WHERE person_id = erased; END $$""",
        """CREATE FUNCTION evidence_erasure_must_end() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF EXISTS (SELECT 1 FROM evidence_erasure WHERE person_id = NEW.person_id) THEN
            RAISE EXCEPTION 'an erasure marker for person % was left at commit', NEW.person_id;
          END IF;
          RETURN NULL;
        END $$""",
        "CREATE CONSTRAINT TRIGGER evidence_erasure_ends AFTER INSERT ON evidence_erasure "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION evidence_erasure_must_end()",
        *(f"REVOKE ALL ON FUNCTION {f} FROM PUBLIC" for f in FUNCTIONS),
    ]


def upgrade() -> None:
    op.create_index("ix_audit_event_subject", "audit_event", ["subject_type", "subject_id"])
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    statements = _guards(ALLOWED, postgresql)
    if postgresql:
        schema = bind.dialect.identifier_preparer.quote(
            bind.exec_driver_sql("SELECT current_schema()").scalar()
        )
        statements += _postgresql_erasure(schema)
    else:
        statements += _sqlite_no_replace()
    for statement in statements:
        op.execute(statement)


def revoke_changes(bind: sa.Connection, role: str) -> None:
    """Only the owner's functions write erasure markers; the application role may call them."""
    quoted = bind.dialect.identifier_preparer.quote(role)
    bind.execute(
        sa.text(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON evidence_erasure FROM {quoted}")
    )
    for function in FUNCTIONS:
        bind.execute(sa.text(f"GRANT EXECUTE ON FUNCTION {function} TO {quoted}"))


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("DROP TRIGGER evidence_erasure_ends ON evidence_erasure")
        op.execute("DROP FUNCTION evidence_erasure_must_end()")
        for function in FUNCTIONS:
            op.execute(f"DROP FUNCTION {function}")
    else:
        for table in KEYS:
            op.execute(f"DROP TRIGGER {table}_no_replace")
    for statement in _guards(ALLOWED_0011, postgresql):
        op.execute(statement)
    op.drop_index("ix_audit_event_subject", table_name="audit_event")
