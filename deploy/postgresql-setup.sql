-- Countersign on PostgreSQL: two roles, one database.
--
-- Run once, as a superuser, from a terminal (it asks for the application role's password):
--     sudo -u postgres psql -v ON_ERROR_STOP=1 -f deploy/postgresql-setup.sql
--
-- countersign_owner owns the schema: `flask db upgrade` and `flask restore` connect as it
--   (COUNTERSIGN_MIGRATION_DATABASE_URL, in migrate.env), running as the Unix user
--   countersign-migrate, never as the app's user countersign. The owner has NO password: it logs in
--   only over the local socket by peer authentication, mapped from that one Unix user. Add to
--   pg_ident.conf:
--       countersign     countersign-migrate     countersign_owner
--   and to pg_hba.conf, above the other "local" lines:
--       local   countersign     countersign_owner       peer map=countersign
--   then `systemctl reload postgresql`. (A database on another host: give the owner a password
--   with \password countersign_owner and keep it in a .pgpass file that only countersign-migrate
--   can read; see migrate.env.example.)
-- countersign_app is the role the running app logs in as (COUNTERSIGN_DATABASE_URL, with
--   COUNTERSIGN_DATABASE_APP_ROLE=countersign_app). After every migration the owner grants it
--   SELECT, INSERT, UPDATE and DELETE on the tables and USAGE on the sequences, and takes back
--   UPDATE and DELETE on audit_event and every write on alembic_version. It owns nothing, so it
--   cannot ALTER or DROP a table, or drop or disable the triggers that keep evidence append-only.

CREATE ROLE countersign_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE countersign_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
\password countersign_app

CREATE DATABASE countersign OWNER countersign_owner ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE countersign FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE countersign TO countersign_owner;
GRANT CONNECT ON DATABASE countersign TO countersign_app;

\connect countersign
-- Only the owner creates objects; the app role may only use what the owner made.
ALTER SCHEMA public OWNER TO countersign_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO countersign_app;
