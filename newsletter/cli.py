"""The `newsletter` command: thin wrappers that parse, call one service function, print.

Every NewsletterError becomes one line on stderr and exit code 1 (see NewsletterGroup);
a real bug keeps its plain traceback.

Each command imports the modules it uses inside its body: importing them all up front
(SQLAlchemy, Alembic, premailer, feedparser, dkim) cost ~2 s of CPU before `--help`
could even print. tests/test_cli_startup.py keeps it that way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import cached_property
from itertools import chain, islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from newsletter import __version__
from newsletter.errors import InvalidInput, NewsletterError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from newsletter import articles, db
    from newsletter.config import Settings
    from newsletter.inbound.policy import Tally
    from newsletter.models import SubscriberStatus

console = Console(soft_wrap=True)  # piped output: one line per message, never cut at 80 columns
err_console = Console(stderr=True, soft_wrap=True)


class NewsletterGroup(TyperGroup):
    """Turns every NewsletterError raised by any subcommand into `Error: …` and exit 1."""

    def invoke(self, ctx: Any) -> Any:  # Any: the base class types it with typer's private vendored click
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=NewsletterGroup,
        help=help_text,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )


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
    def settings(self) -> Settings:
        from newsletter import config

        return config.load(self.config_path)

    @cached_property
    def engine(self) -> Engine:
        from newsletter import db

        return db.make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> db.Sessions:
        """Sessions on a database at the newest schema (else one line: run init / db upgrade)."""
        from newsletter import db

        db.require_current(self.engine)
        return db.session_factory(self.engine)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"newsletter {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    config: Path = typer.Option(
        Path("config.toml"), "--config", envvar="NEWSLETTER_CONFIG", help="Path of the config file.", show_default=True
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = Context(config)


def get(ctx: typer.Context) -> Context:
    found = ctx.find_object(Context)
    if found is None:  # only if a command ran without the app's callback: a bug, not bad input
        raise RuntimeError("newsletter command context missing")
    return found


def signing(ctx: typer.Context) -> Context:
    """The context of a command that signs or checks subscriber links: a guessable secret
    key is refused before anything is read or changed (tokens.py refuses it too, later)."""
    from newsletter.config import check_secret_key

    c = get(ctx)
    check_secret_key(c.settings.newsletter.secret_key)
    return c


TABLE_ROWS = 1000  # longer output is streamed as lines: a rich table holds every row in memory


def print_table(title: str, columns: list[str], rows: Iterable[list[Any]]) -> None:
    """A rich table on a terminal; tab-separated lines when piped (easy to grep/cut) or
    longer than TABLE_ROWS, written as `rows` yields them."""
    rows = iter(rows)
    head = list(islice(rows, TABLE_ROWS + 1)) if console.is_terminal else []
    if console.is_terminal and len(head) <= TABLE_ROWS:
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in head:
            table.add_row(*[str(v) for v in row])
        console.print(table)
        return
    write = sys.stdout.write
    for row in chain(head, rows):
        write("\t".join(map(str, row)) + "\n")


@app.command()
def init(ctx: typer.Context) -> None:
    """Write config.toml (if absent) with a fresh secret key, and create the database.

    Example: newsletter init
    """
    import secrets

    from newsletter import config, db

    c = get(ctx)
    if c.config_path.is_dir():
        raise InvalidInput(
            f"{c.config_path} is a folder; pass the config file itself, e.g. --config {c.config_path / 'config.toml'}"
        )
    if c.config_path.exists():
        console.print(f"{c.config_path} exists; keeping it")
    else:
        example = (Path(__file__).parent / "config.example.toml").read_text(encoding="utf-8")
        text = example.replace(config.EXAMPLE_SECRET, secrets.token_urlsafe(32), 1)
        # Owner-only from the first byte: the file holds the secret key (and maybe passwords).
        try:
            with os.fdopen(
                os.open(c.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8"
            ) as fp:
                fp.write(text)
        except OSError as exc:
            raise InvalidInput(f"cannot write {c.config_path} ({exc.strerror}); pick another --config") from None
        console.print(f"wrote {c.config_path}")
    done = db.upgrade(c.engine, c.settings)
    typer.echo(f"database ready: {c.engine.url.render_as_string(hide_password=True)}; {done}")
    _adopt_categories(c)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Migrate the database schema to the newest version.

    Example: newsletter db upgrade
    """
    from newsletter import db

    c = get(ctx)
    typer.echo(f"{c.engine.url.render_as_string(hide_password=True)}: {db.upgrade(c.engine, c.settings)}")
    _adopt_categories(c)


def _adopt_categories(c: Context) -> None:
    """Categories just added to [[categories]] go to the subscribers who asked for them on
    import, and take the articles whose source named them."""
    from newsletter import articles, subscribers

    with c.sessions.begin() as s:
        readers = subscribers.adopt_categories(s)
        filed = articles.adopt_categories(s, c.settings)
    for slug, n in sorted(readers.items()):
        typer.echo(f"category '{slug}' given to {n} subscriber{'' if n == 1 else 's'} who asked for it on import")
    for slug, n in sorted(filed.items()):
        typer.echo(f"category '{slug}' now holds {n} article{'' if n == 1 else 's'} whose source named it")


def _status(value: str | None) -> SubscriberStatus | None:
    from newsletter.models import SubscriberStatus

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
    from newsletter import subscribers
    from newsletter.models import SubscriberStatus

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
    from newsletter import subscriber_import

    c = get(ctx)
    with c.sessions.scratch() if dry_run else c.sessions.begin() as s, file.open("rb") as fp:
        report = subscriber_import.import_csv(s, fp, source=str(file), dry_run=dry_run)
    for row_error in report.invalid:
        typer.echo(f"{file}:{row_error}", err=True)
    for warning in report.warnings:
        typer.echo(f"warning: {file}:{warning}", err=True)
    console.print(("dry run: " if dry_run else "") + report.summary)


def _private_csv(path: Path) -> IO[str]:
    """A CSV file for personal data, readable by its owner only (0600), also when it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "w", encoding="utf-8", newline="")


@subscribers_app.command("export")
def subscribers_export(
    ctx: typer.Context,
    file: Path | None = typer.Argument(None, help="Output CSV; omitted = standard output."),
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """Export subscribers as CSV (re-importable to the same state).

    Example: newsletter subscribers export backup.csv
    """
    from newsletter import subscribers

    c = get(ctx)
    with c.sessions.reading() as s:
        if file is None:
            subscribers.export_csv(s, sys.stdout, status=_status(status))
            return
        with _private_csv(file) as fp:
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
    from newsletter import subscribers

    c = get(ctx)
    with c.sessions.reading() as s:  # a snapshot: writers go on meanwhile, however slow the output
        counts = subscribers.counts_by_status(s)
        print_table(
            "Subscribers",
            ["email", "name", "status", "categories"],
            (
                [sub.email, sub.name, sub.status, ",".join(sub.categories) or "all"]
                for sub in subscribers.iter_listed(s, _status(status))
            ),
        )
    err_console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no subscribers")


@subscribers_app.command("unsubscribe")
def subscribers_unsubscribe(ctx: typer.Context, email: str = typer.Argument(..., help="The address.")) -> None:
    """Unsubscribe an address at once (recorded as an admin unsubscribe).

    Example: newsletter subscribers unsubscribe ada@example.com
    """
    from newsletter import subscribers

    c = get(ctx)
    with c.sessions.begin() as s:
        sub = subscribers.require(s, email)
        changed = subscribers.unsubscribe(s, sub, source="admin")
    console.print(f"unsubscribed {sub.email}" if changed else f"{sub.email} was already {sub.status}")


def _print_import(report: articles.ImportReport) -> None:
    for line in report.skipped:
        typer.echo(f"  {line}", err=True)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    console.print(report.summary_line, highlight=False, soft_wrap=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path} ({exc.strerror})") from None


@articles_app.command("fetch")
def articles_fetch(ctx: typer.Context) -> None:
    """Pull every configured [[feeds]] entry; a broken feed is a warning, the others still import.

    Example: newsletter articles fetch
    """
    from newsletter import articles

    c = get(ctx)
    if not c.settings.feeds:
        raise InvalidInput("no [[feeds]] in the config; add one or use 'newsletter articles import FILE'")
    reports = articles.fetch_all(c.sessions, c.settings)
    for report in reports:
        _print_import(report)


@articles_app.command("import")
def articles_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A .json or .csv file (see README), or an RSS/Atom file."),
) -> None:
    """Import articles from a JSON, CSV or RSS/Atom file; known articles are updated, not duplicated.

    Example: newsletter articles import sample/feeds/articles.json
    """
    from newsletter import articles

    c = get(ctx)
    data = _read(file, "article file")
    with c.sessions.begin() as s:
        report = articles.import_file(s, c.settings, str(file), data)
    _print_import(report)


@articles_app.command("list")
def articles_list(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
) -> None:
    """List the articles published in a week, newest first.

    Example: newsletter articles list --week 2026-W48
    """
    from newsletter import builder

    c = get(ctx)
    week = week or builder.current_week(c.settings)
    with c.sessions.reading() as s:
        rows = [
            [
                (a.published_at or a.created_at).astimezone(c.settings.tz).strftime("%Y-%m-%d %H:%M")
                + ("" if a.published_at else " (undated: first seen)"),
                a.category,
                a.title,
                a.url,
            ]
            for a in builder.week_articles(s, c.settings, week)
        ]
    print_table(f"Articles {week}", ["published", "category", "title", "url"], rows)
    err_console.print(f"{len(rows)} articles in {week}")


@issue_app.command("build")
def issue_build(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
    force: bool = typer.Option(
        False, "--force", help="Reset intro, subject, lead and the desk's choices to the defaults."
    ),
    intro: str | None = typer.Option(None, "--intro", help="Editor's intro in Markdown."),
    intro_file: Path | None = typer.Option(None, "--intro-file", help="Read the Markdown intro from a file."),
    subject: str | None = typer.Option(None, "--subject", help="Subject line; default: [newsletter] subject."),
    lead: str | None = typer.Option(None, "--lead", help="URL of the week's article to feature on top."),
) -> None:
    """Build (or refresh) the draft issue of a week from its articles. A sent issue is never changed.

    Example: newsletter issue build --week 2026-W48 --lead https://example.com/story --intro "Welcome!"
    """
    from newsletter import builder

    c = get(ctx)
    if intro_file is not None:
        intro = _read(intro_file, "intro file").decode("utf-8", errors="replace")
    with c.sessions.begin() as s:
        issue = builder.build(s, c.settings, week, intro=intro, subject=subject, lead_url=lead, force=force)
        content = builder.load_content(s, c.settings, issue.week)
    count = sum(len(sec.articles) for sec in content.sections) + (content.lead is not None)
    when = issue.scheduled_at.astimezone(c.settings.tz).strftime("%a %Y-%m-%d %H:%M") if issue.scheduled_at else "-"
    lines = [f"built {issue.week} ({issue.status}): {count} article{'' if count == 1 else 's'}"]
    if content.lead:
        lines.append(f"lead: {content.lead.title}")
    if content.sections:
        lines.append("sections: " + ", ".join(f"{sec.name} ({len(sec.articles)})" for sec in content.sections))
    lines += [f"subject: {issue.subject}", f"send at: {when} {c.settings.newsletter.timezone}"]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


@issue_app.command("preview")
def issue_preview(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
    out: Path | None = typer.Option(None, "--out", help="File to write; omitted = standard output."),
    text: bool = typer.Option(False, "--text", help="The plain-text part instead of the HTML."),
    subscriber: str | None = typer.Option(None, "--subscriber", help="Render as this subscriber gets it."),
) -> None:
    """Write the built issue as HTML (or --text), whole or as one subscriber would receive it.

    Example: newsletter issue preview --out preview.html --subscriber ada@example.com
    """
    from newsletter import render

    c = get(ctx)
    with c.sessions.reading() as s:
        html_part, text_part = render.preview(s, c.settings, week, email=subscriber)
    document = text_part if text else html_part
    if out is None:
        sys.stdout.write(document)
        return
    try:
        out.write_text(document, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {out} ({exc.strerror}); pick another --out") from None
    err_console.print(f"wrote {out} ({len(document.encode()) // 1024} KB)", highlight=False)


@issue_app.command("cancel")
def issue_cancel(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
) -> None:
    """Stop an issue's send for good. Nobody reached yet: it becomes a draft again, to edit and
    send later. Otherwise the deliveries not yet made are dropped (recorded as skipped).

    Example: newsletter issue cancel --week 2026-W48
    """
    from newsletter import sender

    c = get(ctx)
    with c.sessions.begin() as s:
        line = sender.cancel(s, c.settings, week)
    console.print(line, highlight=False, soft_wrap=True)


@issue_app.command("list")
def issue_list(ctx: typer.Context) -> None:
    """List every issue with its status and send time, newest first.

    Example: newsletter issue list
    """
    from newsletter import builder

    c = get(ctx)
    tz = c.settings.tz
    with c.sessions.reading() as s:
        rows = [
            [
                i.week,
                i.status,
                i.scheduled_at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if i.scheduled_at else "-",
                i.sent_at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if i.sent_at else "-",
                i.subject,
            ]
            for i in builder.list_issues(s)
        ]
    print_table("Issues", ["week", "status", "send at", "sent", "subject"], rows)
    if not rows:
        err_console.print("no issues yet; run 'newsletter issue build'")


_URL = typer.Argument(..., help="The article's URL (as in 'newsletter articles list').")
_WEEK = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week.")


def _print_draft(ctx: typer.Context, week: str) -> None:
    from newsletter import builder

    c = get(ctx)
    with c.sessions.reading() as s:
        content = builder.load_content(s, c.settings, week)
    lines = [f"lead: {content.lead.title}"] if content.lead else []
    for sec in content.sections:
        lines += [f"{sec.name}:"] + [f"  {n}. {a.title}  {a.url}" for n, a in enumerate(sec.articles, 1)]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


@issue_app.command("exclude")
def issue_exclude(ctx: typer.Context, url: str = _URL, week: str | None = _WEEK) -> None:
    """Leave an article out of the draft; the next article of its section takes its place.
    Kept when the issue is rebuilt (undo with 'issue restore').

    Example: newsletter issue exclude https://example.com/story --week 2026-W48
    """
    from newsletter import builder, curation

    c = get(ctx)
    with c.sessions.begin() as s:
        issue = curation.exclude(s, c.settings, week or builder.current_week(c.settings), url)
    _print_draft(ctx, issue.week)


@issue_app.command("restore")
def issue_restore(ctx: typer.Context, url: str = _URL, week: str | None = _WEEK) -> None:
    """Bring an article left out with 'issue exclude' back into the draft.

    Example: newsletter issue restore https://example.com/story
    """
    from newsletter import builder, curation

    c = get(ctx)
    with c.sessions.begin() as s:
        issue = curation.restore(s, c.settings, week or builder.current_week(c.settings), url)
    _print_draft(ctx, issue.week)


@issue_app.command("move")
def issue_move(
    ctx: typer.Context,
    url: str = _URL,
    section: str | None = typer.Option(None, "--section", help="Category slug; default: the article's section."),
    position: int | None = typer.Option(None, "--position", help="1 = first in the section; default: last."),
    week: str | None = _WEEK,
) -> None:
    """Place an article in a section at a position; the section keeps that order across rebuilds.

    Example: newsletter issue move https://example.com/story --section events --position 1
    """
    from newsletter import builder, curation

    c = get(ctx)
    with c.sessions.begin() as s:
        issue = curation.move(
            s, c.settings, week or builder.current_week(c.settings), url, section=section, position=position
        )
    _print_draft(ctx, issue.week)


unsubscribes_app = _typer("Unsubscribe requests received by mail.")
app.add_typer(unsubscribes_app, name="unsubscribes")


@app.command()
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    insecure_dev: bool = typer.Option(
        False, "--insecure-dev", help="Allow the example secret_key (never on a public server)."
    ),
) -> None:
    """Run the subscriber web app (unsubscribe, preferences, subscribe, archive, tracked links) and
    the editor's desk under /admin/ (until Ctrl-C).

    Example: newsletter serve --host 127.0.0.1 --port 8000
    """
    from newsletter import web

    c = get(ctx)
    err_console.print(
        f"subscriber pages on http://{host}:{port}/ ; links in mails start with {c.settings.newsletter.base_url}",
        highlight=False,
        soft_wrap=True,
    )
    err_console.print(
        f"the editor's desk on http://{host}:{port}/admin/ (editors: 'newsletter admin add EMAIL')",
        highlight=False,
        soft_wrap=True,
    )
    web.serve(c.settings, c.sessions, host=host, port=port, insecure_dev=insecure_dev)


@unsubscribes_app.command("import")
def unsubscribes_import(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="A Maildir folder or an mbox file of the unsubscribe mailbox."),
) -> None:
    """Unsubscribe everyone who mailed the List-Unsubscribe address (matched by the token in the
    address or subject, else by sender). Safe to rerun: no message is processed twice.

    Example: newsletter unsubscribes import ~/Maildir/.unsubscribe
    """
    from newsletter.inbound import mailin

    c = signing(ctx)
    report = mailin.import_unsubscribes(c.sessions, c.settings, path)
    for line in report.unmatched:
        err_console.print(line, highlight=False)
    console.print(report.summary, highlight=False)


@issue_app.command("weblink")
def issue_weblink(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
) -> None:
    """Print the issue's public web address and a signed link for editors to preview it in a
    browser while it is a draft (served by `newsletter serve`; valid 30 days).

    Example: newsletter issue weblink --week 2026-W48
    """
    from newsletter import builder, tokens

    c = signing(ctx)
    week = week or builder.current_week(c.settings)
    with c.sessions.reading() as s:
        content = builder.load_content(s, c.settings, week)
    base = c.settings.newsletter.base_url.rstrip("/")
    shown = "" if content.status == "sent" else "  (public once sent)"
    console.print(f"archive: {base}/issues/{week}{shown}", highlight=False, soft_wrap=True)
    console.print(f"preview: {tokens.preview_url(c.settings, content.issue_id, week)}", highlight=False, soft_wrap=True)


bounces_app = _typer("Bounces and spam complaints: keep the list clean automatically.")
app.add_typer(bounces_app, name="bounces")


def _print_tally(tally: Tally) -> None:
    for line in tally.problems:
        err_console.print(line, highlight=False, soft_wrap=True)
    console.print(tally.summary, highlight=False, soft_wrap=True)


@bounces_app.command("import")
def bounces_import(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="A Maildir folder, an mbox file, an .eml file or a folder of .eml files."),
) -> None:
    """Read returned mail (bounces, ARF complaints) and update the subscribers it names.
    The files are left as they are; a rerun changes nothing twice.

    Example: newsletter bounces import ~/Maildir/.bounces
    """
    from newsletter.inbound import mailfiles, policy

    c = get(ctx)
    _print_tally(mailfiles.import_path(c.sessions, policy.Policy.from_settings(c.settings), path))


@bounces_app.command("fetch")
def bounces_fetch(
    ctx: typer.Context,
    limit: int = typer.Option(0, "--limit", min=0, help="Process at most N messages (0 = all)."),
) -> None:
    """Fetch the IMAP bounce mailbox of [bounces] imap_* and process every message; each one is
    moved to imap_processed_folder (or deleted) only after its database commit.

    Example: newsletter bounces fetch --limit 500
    """
    from newsletter.inbound import imap, policy

    c = get(ctx)
    _print_tally(imap.fetch_imap(c.sessions, policy.Policy.from_settings(c.settings), c.settings, limit=limit))


@subscribers_app.command("reactivate")
def subscribers_reactivate(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The address."),
    reason: str = typer.Option(..., "--reason", help="Why, kept in the subscriber's history."),
) -> None:
    """Re-activate a bounced, complained or unsubscribed subscriber, recording the reason.

    Example: newsletter subscribers reactivate bob@example.com --reason "mailbox fixed, asked by phone"
    """
    from newsletter import subscribers

    with get(ctx).sessions.begin() as s:
        previous = subscribers.reactivate(s, email, reason=reason)
    console.print(f"{email}: {previous} -> active", highlight=False)


# --- sending (issue 5) -------------------------------------------------------------------

deliveries_app = _typer("The delivery ledger: who got an issue, who did not, and why.")
app.add_typer(deliveries_app, name="deliveries")


class _SendProgress:
    """A rich progress bar on a terminal; a plain log line every few seconds otherwise (cron)."""

    def __init__(self) -> None:
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.clock = time.monotonic
        self.started = self.last = self.clock()
        self.bar = (
            Progress(
                TextColumn("sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            if err_console.is_terminal
            else None
        )
        self.task = self.bar.add_task("send", total=None, detail="") if self.bar else None

    def __enter__(self) -> _SendProgress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, report: Any, total: int) -> None:
        elapsed = max(self.clock() - self.started, 1e-6)
        detail = f"failed {report.failed}, {report.sent / elapsed:.0f} msg/s"
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, total=total, completed=report.sent + report.failed, detail=detail)
        elif report.sent + report.failed and self.clock() - self.last >= 5:
            # Only once something was handed over: a slow start (a loaded machine) or a server
            # that is down prints no "sent 0 of N" line before the one-line error.
            self.last = self.clock()
            typer.echo(f"sent {report.sent} of {total}, {detail}", err=True)


def _print_send_report(report: Any) -> None:
    console.print(
        f"issue {report.week}: sent {report.sent}, failed {report.failed} (bounced {report.bounced}), "
        f"skipped {report.skipped}, retries {report.retrying} in {report.elapsed:.1f} s "
        f"({report.rate:.0f} msg/s); issue is {report.issue_status}",
        highlight=False,
    )
    if report.remaining:
        console.print(
            f"{report.remaining} deliveries still open ({report.ambiguous} ambiguous); "
            f"`newsletter stats --week {report.week}` lists them",
            highlight=False,
        )
    for note in report.notes:
        console.print(note, highlight=False)


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the recipients per variant; send nothing."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Send at most N messages in this run."),
    test_to: str | None = typer.Option(None, "--test-to", help="Send one copy to this address, outside the ledger."),
    force: bool = typer.Option(False, "--force", help="Send even if the issue is older than [delivery] max_age_hours."),
    resend_ambiguous: bool = typer.Option(
        False, "--resend-ambiguous", help="Also resend messages an interrupted send may or may not have sent."
    ),
) -> None:
    """Send the built issue to every active subscriber (their sections only); resumes where it stopped.

    Example: newsletter send --week 2026-W48 --dry-run
    """
    from newsletter import sender, subscribers

    c = get(ctx)
    if dry_run:
        with c.sessions.reading() as s:
            plans = sender.dry_run(s, c.settings, week)
        print_table(
            "Recipients per variant",
            ["sections", "recipients", "for example"],
            [[" ".join(p.sections), p.recipients, ", ".join(p.examples)] for p in plans],
        )
        console.print(f"{sum(p.recipients for p in plans)} messages would be sent", highlight=False)
        return
    if test_to:
        address = subscribers.normalize_email(test_to)
        reply = sender.send_test(c.sessions, c.settings, week, address)
        console.print(f"test copy sent to {address}: {reply}", highlight=False)
        return
    with _SendProgress() as progress:
        report = sender.send(
            c.sessions, c.settings, week, limit=limit, force=force, resend_ambiguous=resend_ambiguous, progress=progress
        )
    _print_send_report(report)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    no_fetch: bool = typer.Option(False, "--no-fetch", help="Do not pull the feeds first."),
) -> None:
    """Cron entry: fetch feeds, build this week's issue, send it once send_day/send_time has passed.

    Example: newsletter run
    """
    from newsletter import scheduler

    c = get(ctx)
    with _SendProgress() as progress:
        report = scheduler.run(c.sessions, c.settings, fetch=not no_fetch, progress=progress)
    for line in report.lines:
        console.print(line, highlight=False)
    if report.send is not None:
        _print_send_report(report.send)


@app.command("stats")
def stats_cmd(
    ctx: typer.Context,
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
) -> None:
    """Sent, failed, bounced, pending, ambiguous and unsubscribed counts of an issue, and its clicks.

    Example: newsletter stats --week 2026-W48
    """
    from newsletter import builder, clicks, stats

    with get(ctx).sessions.reading() as s:
        result = stats.issue_stats(s, get(ctx).settings, week)
        clicked = clicks.click_stats(s, get(ctx).settings, builder.get_issue(s, get(ctx).settings, result.week).id)
    rows = [*result.rows, ("clicks", clicked.clicks), ("link scanner fetches (not counted)", clicked.scanner)]
    rows += [(f"clicks in {name}", n) for name, n in clicked.by_section]
    rows += [
        (f"top {rank}: {title} ({section})", n) for rank, (title, _url, section, n) in enumerate(clicked.top[:5], 1)
    ]
    print_table(f"Issue {result.week}", ["", "count"], [[label, value] for label, value in rows])
    if result.bounces.warning:
        err_console.print(f"warning: {result.bounces.warning}", highlight=False, soft_wrap=True)
    if result.ambiguous:
        more = " …" if result.ambiguous > len(result.ambiguous_emails) else ""
        console.print(
            f"ambiguous (an interrupted send may or may not have delivered these): "
            f"{', '.join(result.ambiguous_emails)}{more}",
            highlight=False,
        )
        console.print(f"resend them with `newsletter send --week {result.week} --resend-ambiguous`", highlight=False)


@deliveries_app.command("export")
def deliveries_export(
    ctx: typer.Context,
    file: Path | None = typer.Argument(None, help="CSV file to write; default: standard output."),
    week: str | None = typer.Option(None, "--week", help="ISO week like 2026-W48; default: this week."),
) -> None:
    """Every recipient of an issue as CSV: status, attempts, the server's last reply, times.

    Example: newsletter deliveries export --week 2026-W48 deliveries.csv
    """
    from newsletter import stats

    c = get(ctx)
    with c.sessions.reading() as s:
        if file is None:
            stats.export_deliveries(s, c.settings, week, sys.stdout)
            return
        with _private_csv(file) as fp:
            n = stats.export_deliveries(s, c.settings, week, fp)
    typer.echo(f"wrote {n} deliveries to {file}", err=True)


# --- the desk's editors (issue 16) --------------------------------------------------------

admin_app = _typer("Editors who may sign in to the desk (/admin/ of `newsletter serve`).")
app.add_typer(admin_app, name="admin")


def _new_password() -> str:
    """Asked twice on a terminal; read from the first line of stdin otherwise (scripts)."""
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\r\n")


@admin_app.command("add")
def admin_add(ctx: typer.Context, email: str = typer.Argument(..., help="The editor's address.")) -> None:
    """Add an editor, or give an existing one a new password (which signs them out everywhere).
    The password is asked for on a terminal, or read from the first line of standard input.

    Example: newsletter admin add editor@example.com
    """
    from newsletter import editors

    password = _new_password()
    with get(ctx).sessions.begin() as s:
        editor = editors.add(s, email, password)
    console.print(f"{editor.email} may sign in at /admin/login", highlight=False)


@admin_app.command("list")
def admin_list(ctx: typer.Context) -> None:
    """List the editors and when each last signed in.

    Example: newsletter admin list
    """
    from newsletter import editors

    with get(ctx).sessions.reading() as s:
        rows = [
            [e.email, e.last_login_at.isoformat(timespec="minutes") if e.last_login_at else "never"]
            for e in editors.list_editors(s)
        ]
    print_table("Editors", ["email", "last sign-in"], rows)
    if not rows:
        err_console.print("no editors yet; add one with 'newsletter admin add EMAIL'")


@admin_app.command("remove")
def admin_remove(ctx: typer.Context, email: str = typer.Argument(..., help="The editor's address.")) -> None:
    """Remove an editor; their open sessions end at once.

    Example: newsletter admin remove editor@example.com
    """
    from newsletter import editors

    with get(ctx).sessions.begin() as s:
        editors.remove(s, email)
    console.print(f"removed {email}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="newsletter")


if __name__ == "__main__":
    main()
