"""Alembic environment: run with the engine the application hands over in-process."""

from alembic import context
from sqlalchemy import Connection, create_engine

from newsletter.models import Base

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
sqlite = engine.dialect.name == "sqlite"


def _pragma(connection: Connection, sql: str) -> None:
    """Run a PRAGMA on the driver connection itself, outside any SQLAlchemy transaction."""
    cursor = connection.connection.cursor()
    cursor.execute(sql)
    cursor.close()


with engine.connect() as connection:
    if sqlite:
        # A batch migration rebuilds a table and drops the old one; with foreign keys on, that
        # DROP would cascade-delete every row pointing at it. The pragma only takes effect
        # outside a transaction, so it goes to the driver before SQLAlchemy begins one.
        _pragma(connection, "PRAGMA foreign_keys=OFF")
    try:
        with connection.begin():
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=sqlite,  # SQLite ALTER TABLE needs batch mode
                compare_type=True,
            )
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows pointing at missing rows: {broken[:5]}")
    finally:
        if sqlite:
            _pragma(connection, "PRAGMA foreign_keys=ON")
