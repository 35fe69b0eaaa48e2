"""The `newsletter` command: thin wrappers that parse, call one service function, print.

Every NewsletterError becomes one line on stderr and exit code 1 (see NewsletterGroup);
a real bug keeps its plain traceback.
"""

from __future__ import annotations

import secrets
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.core import TyperGroup

from newsletter import config as config_mod
from newsletter import db, subscribers
from newsletter.errors import InvalidInput, NewsletterError
from newsletter.models import SubscriberStatus

console = Console()
err_console = Console(stderr=True)


class NewsletterGroup(TyperGroup):
    """Turns every NewsletterError raised by any subcommand into `Error: …` and exit 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(cls=NewsletterGroup, help=help_text, no_args_is_help=True,
                       pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)


app = _typer("Compile the week's articles into one HTML issue and mail it to every subscriber.")
db_app = _typer("Database schema.")
subscribers_app = _typer("Manage the subscriber list.")
articles_app = _typer("Collect the week's articles.")
issue_app = _typer("Build and preview the weekly issue.")
app.add_typer(db_app, name="db")
app.add_typer(subscribers_app, name="subscribers")
app.add_typer(articles_app, name="articles")
app.add_typer(issue_app, name="issue")


class Context:
    """What every command needs, loaded lazily so `init` works before config exists."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    @cached_property
    def settings(self) -> config_mod.Settings:
        return config_mod.load(self.config_path)

    @cached_property
    def engine(self) -> Engine:
        return db.make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.session_factory(self.engine)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Path = typer.Option(Path("config.toml"), "--config", envvar="NEWSLETTER_CONFIG",
                                help="Path of the config file.", show_default=True),
) -> None:
    ctx.obj = Context(config)


def get(ctx: typer.Context) -> Context:
    return ctx.find_object(Context)  # type: ignore[return-value]


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on a terminal; tab-separated lines when piped (easy to grep/cut)."""
    if console.is_terminal:
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*[str(v) for v in row])
        console.print(table)
    else:
        for row in rows:
            print("\t".join(str(v) for v in row))


@app.command()
def init(ctx: typer.Context) -> None:
    """Write config.toml (if absent) with a fresh secret key, and create the database.

    Example: newsletter init
    """
    c = get(ctx)
    if c.config_path.exists():
        console.print(f"{c.config_path} exists; keeping it")
    else:
        example = (Path(__file__).parent / "config.example.toml").read_text(encoding="utf-8")
        text = example.replace(config_mod.EXAMPLE_SECRET, secrets.token_urlsafe(32), 1)
        c.config_path.write_text(text, encoding="utf-8")
        console.print(f"wrote {c.config_path}")
    db.upgrade(c.engine, c.settings)
    console.print(f"database ready: {c.engine.url.render_as_string(hide_password=True)}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database schema to the newest version.

    Example: newsletter db upgrade
    """
    c = get(ctx)
    db.upgrade(c.engine, c.settings)
    console.print("database is at the newest schema")


def _status(value: str | None) -> SubscriberStatus | None:
    if value is None:
        return None
    try:
        return SubscriberStatus(value.lower())
    except ValueError:
        raise InvalidInput(f"--status {value!r} must be one of {', '.join(SubscriberStatus)}") from None


@subscribers_app.command("add")
def subscribers_add(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The address to add."),
    name: str = typer.Option("", "--name", help="Display name used in the greeting."),
    categories: str = typer.Option("", "--categories", help="Comma-separated category slugs; none = all."),
    pending: bool = typer.Option(False, "--pending", help="Add as pending (not mailed until confirmed)."),
) -> None:
    """Add one subscriber (active unless --pending).

    Example: newsletter subscribers add ada@example.com --name "Ada" --categories news,events
    """
    c = get(ctx)
    status = SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE
    with c.sessions.begin() as s:
        sub = subscribers.add(s, email, name=name, categories=categories.split(","), status=status, source="cli")
        console.print(f"added {sub.email} ({sub.status})")


@subscribers_app.command("import")
def subscribers_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV file with an email column.", exists=True, dir_okay=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change without writing."),
) -> None:
    """Import subscribers from a CSV file (UTF-8 or Latin-1, ',' or ';', header names matched loosely).

    Extra columns are kept as attributes. Nobody who unsubscribed, bounced or complained is re-activated.

    Example: newsletter subscribers import members.csv --dry-run
    """
    c = get(ctx)
    with c.sessions.begin() as s, file.open("rb") as fp:
        report = subscribers.import_csv(s, fp, source=str(file), dry_run=dry_run)
        if dry_run:
            s.rollback()
    for row_error in report.invalid:
        typer.echo(f"{file}:{row_error}", err=True)
    console.print(("dry run: " if dry_run else "") + report.summary)


@subscribers_app.command("export")
def subscribers_export(
    ctx: typer.Context,
    file: Path | None = typer.Argument(None, help="Output CSV; omitted = standard output."),
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """Export subscribers as CSV (re-importable to the same state).

    Example: newsletter subscribers export backup.csv
    """
    c = get(ctx)
    with c.sessions.begin() as s:
        if file is None:
            subscribers.export_csv(s, sys.stdout, status=_status(status))
            return
        with file.open("w", encoding="utf-8", newline="") as fp:
            n = subscribers.export_csv(s, fp, status=_status(status))
    err_console.print(f"exported {n} subscribers to {file}")


@subscribers_app.command("list")
def subscribers_list(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", help="pending, active, unsubscribed, bounced, complained."),
) -> None:
    """List subscribers with their status and categories.

    Example: newsletter subscribers list --status active
    """
    c = get(ctx)
    with c.sessions.begin() as s:
        rows = [[sub.email, sub.name, sub.status, ",".join(subscribers.category_slugs(s, sub)) or "all"]
                for sub in subscribers.list_subscribers(s, _status(status))]
        counts = subscribers.counts_by_status(s)
    print_table("Subscribers", ["email", "name", "status", "categories"], rows)
    err_console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no subscribers")


@subscribers_app.command("unsubscribe")
def subscribers_unsubscribe(ctx: typer.Context, email: str = typer.Argument(..., help="The address.")) -> None:
    """Unsubscribe an address at once (recorded as an admin unsubscribe).

    Example: newsletter subscribers unsubscribe ada@example.com
    """
    c = get(ctx)
    with c.sessions.begin() as s:
        sub = subscribers.require(s, email)
        changed = subscribers.unsubscribe(s, sub, source="admin")
    console.print(f"unsubscribed {sub.email}" if changed else f"{sub.email} was already {sub.status}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="newsletter")


if __name__ == "__main__":
    sys.exit(main())
