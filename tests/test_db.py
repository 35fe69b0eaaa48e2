"""The schema: Alembic head matches the models (tables, columns, indexes, types; CHECK
constraints, which autogenerate does not compare, by a test of their own), on SQLite and
PostgreSQL."""

import re

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Enum, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from newsletter import subscribers
from newsletter.config import Settings
from newsletter.db import alembic_config, make_engine, newest_migration_file, upgrade
from newsletter.models import Base, SubscriberStatus


def test_alembic_head_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_the_newest_migration_file_is_alembics_single_head(engine: Engine) -> None:
    """Commands check the schema against the newest file's revision without loading Alembic."""
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    assert heads == [newest_migration_file()], "migrations must chain linearly as 000N_<what>.py (revision '000N')"


def test_core_tables_exist(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "subscribers",
        "categories",
        "subscriber_categories",
        "articles",
        "issues",
        "issue_articles",
        "deliveries",
        "events",
    } <= tables


def test_sqlite_runs_in_wal_with_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def _allowed(sql: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", sql))


def test_migrated_check_constraints_match_the_models(engine: Engine) -> None:
    """Autogenerate does not compare CHECK constraints: every status column's allowed values,
    as the models declare them, must be what the migrated database enforces."""
    expected = {
        table.name: {
            f"ck_{table.name}_{col.type.name}": set(col.type.enums)
            for col in table.columns
            if isinstance(col.type, Enum) and col.type.create_constraint
        }
        for table in Base.metadata.sorted_tables
    }
    inspector = inspect(engine)
    migrated = {
        name: {c["name"]: _allowed(c["sqltext"]) for c in inspector.get_check_constraints(name)} for name in expected
    }
    assert migrated == expected, "a migration changing a status enum must replace its CHECK (see 0005_status_checks)"
    assert expected["subscribers"] == {"ck_subscribers_subscriberstatus": {s.value for s in SubscriberStatus}}


def test_the_database_refuses_a_status_the_code_does_not_know(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        subscribers.add(s, "ada@example.com")
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.execute(text("UPDATE subscribers SET status = 'gone'"))
    with sessions.begin() as s:
        assert s.scalar(text("SELECT status FROM subscribers")) == "active"


def test_adding_the_checks_keeps_every_row(db_url: str, settings: Settings) -> None:
    """On SQLite a CHECK is added by rebuilding the table: nothing pointing at it may be lost."""
    eng = make_engine(db_url)
    try:
        cfg = alembic_config(eng)
        revisions = ScriptDirectory.from_config(cfg).walk_revisions()
        before = next(r for r in revisions if r.path.endswith("_status_checks.py")).down_revision
        command.upgrade(cfg, str(before))
        with eng.begin() as conn:
            for sql in [
                "INSERT INTO subscribers (id, email, email_key, name, status, consent_source, status_changed_at, "
                "created_at, attributes, soft_bounces) VALUES (101, 'a@example.com', 'a@example.com', 'A', 'active', "
                "'cli', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}', 0)",
                "INSERT INTO categories (id, slug, name, position) VALUES (101, 'old', 'Old', 9)",
                "INSERT INTO subscriber_categories (subscriber_id, category_id) VALUES (101, 101)",
                "INSERT INTO issues (id, week, status, subject, intro, created_at) VALUES (101, '2026-W01', 'sent', "
                "'S', '', '2026-01-01 00:00:00')",
                "INSERT INTO deliveries (id, issue_id, subscriber_id, status, attempts, last_reply, variant, "
                "claimed_by, created_at) VALUES (101, 101, 101, 'sent', 1, '250 OK', 'news', '', "
                "'2026-01-01 00:00:00')",
                "INSERT INTO events (id, kind, subscriber_id, issue_id, source, detail, created_at) VALUES "
                "(101, 'subscribe', 101, NULL, 'cli', '', '2026-01-01 00:00:00')",
                "INSERT INTO articles (id, guid, url, title, category, author, summary, image_url, source, "
                "published_at, created_at, updated_at) VALUES (101, 'g', 'https://example.com/a', 'A', 'old', '', "
                "'', '', 'feed', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
                "INSERT INTO issue_articles (issue_id, article_id, category, position) VALUES (101, 101, 'old', 0)",
            ]:
                conn.exec_driver_sql(sql)
        upgrade(eng, settings)
        with eng.connect() as conn:
            counts = {
                t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
                for t in ("subscribers", "subscriber_categories", "issues", "deliveries", "events", "issue_articles")
            }
        assert counts == dict.fromkeys(counts, 1) and len(counts) == 6, counts
    finally:
        eng.dispose()
