"""Sending from the desk, through the same engine as the CLI and cron, never a second path:

- "send me a test" calls `sender.send_test` (one copy, outside the ledger);
- "send now" starts `newsletter send --week W` as a child process with this server's
  config, so the ledger, the sender lease and every retry rule are the CLI's own;
- "schedule" records the time on the issue; the next `newsletter run` (cron) after it
  sends the issue.
Progress is read from the ledger, so it also shows a send started from a terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from newsletter import curation, sender, stats, subscribers
from newsletter.desk.base import HEADERS, DeskState, Signed, editor_only
from newsletter.errors import Conflict, InvalidInput


@dataclass
class Worker:
    """A `newsletter send` child started from the desk. Its output goes to a temporary file
    (not a pipe: the child outlives a restart of the server), deleted once the child has
    ended and its last line was read, or when the server stops."""

    process: subprocess.Popen[bytes]
    log: Path
    started_by: str
    final: str | None = None  # the last line, once the child has ended

    def last_line(self) -> str:
        if self.final is not None:
            return self.final
        ended = self.process.poll() is not None
        lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        line = lines[-1][:500] if lines else ""
        if ended:
            self.final = line
            self.close()
        return line

    def close(self) -> None:
        """Delete the log (a child still running keeps writing to it unseen, then exits)."""
        self.log.unlink(missing_ok=True)


@dataclass
class Workers:
    by_week: dict[str, Worker] = field(default_factory=dict)

    def running(self, week: str) -> bool:
        worker = self.by_week.get(week)
        return worker is not None and worker.process.poll() is None

    def close(self) -> None:
        for worker in self.by_week.values():
            worker.close()

    def start(self, config: Path, week: str, editor: str) -> Worker:
        if week in self.by_week:
            self.by_week[week].close()  # the previous send of the week has ended (see `running`)
        log = Path(tempfile.mkstemp(prefix=f"newsletter-send-{week}-", suffix=".log")[1])
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "newsletter", "--config", str(config), "send", "--week", week],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                start_new_session=True,  # a restart of the server does not stop a send halfway
            )
        self.by_week[week] = worker = Worker(process, log, editor)
        return worker


class Sending:
    def __init__(self, state: DeskState) -> None:
        self.state = state
        self.workers = Workers()

    def _back(self, week: str, notice: str) -> Response:
        return RedirectResponse(f"/admin/issues/{week}?notice={notice}", status_code=303, headers=HEADERS)

    @editor_only
    async def test(self, request: Request, signed: Signed) -> Response:
        """One copy of the whole issue to the given address (default: the editor's own)."""
        week = request.path_params["week"]
        form = await request.form()
        address = subscribers.normalize_email(str(form.get("address", "")).strip() or signed.editor.email)
        # Its own read transaction, then SMTP with none open.
        await run_in_threadpool(sender.send_test, self.state.sessions, self.state.settings, week, address)
        return self._back(week, "test")

    @editor_only
    async def now(self, request: Request, signed: Signed) -> Response:
        """Start `newsletter send --week W` in the background and show its progress."""
        week = request.path_params["week"]
        config = self.state.settings.path
        if config is None:
            raise Conflict("the desk can only start a send when `newsletter serve` runs with a config file")
        await self.state.db(curation.draft, self.state.settings, week)  # NotFound before anything starts
        if not self.workers.running(week):
            self.workers.start(config, week, signed.editor.email)
        return RedirectResponse(f"/admin/issues/{week}/progress", status_code=303, headers=HEADERS)

    @editor_only
    async def schedule(self, request: Request, signed: Signed) -> Response:
        """Record the send time (in the newsletter's time zone); empty: the configured send day."""
        week = request.path_params["week"]
        form = await request.form()
        raw = str(form.get("when", "")).strip()
        when = None
        if raw:
            try:
                when = datetime.fromisoformat(raw).replace(tzinfo=self.state.settings.tz)
            except ValueError:
                raise InvalidInput(f"send time {raw[:40]!r} is not a date and time like 2026-11-27T09:00") from None
        await self.state.db(curation.schedule, self.state.settings, week, when, editor=signed.editor.email)
        return self._back(week, "scheduled" if when else "unscheduled")

    @editor_only
    async def progress(self, request: Request, signed: Signed) -> Response:
        """The ledger's counts for the issue; the page reloads itself while the send runs."""
        week = request.path_params["week"]
        result = await self.state.db(stats.issue_stats, self.state.settings, week)
        worker = self.workers.by_week.get(week)
        running = self.workers.running(week)
        return self.state.page(
            request,
            "admin/progress.html",
            signed=signed,
            title=f"Sending {week}",
            week=week,
            stats=result,
            worker=worker,
            running=running,
            exit_code=worker.process.poll() if worker else None,
            last_line=worker.last_line() if worker else "",
            headers={"Refresh": "2"} if running or result.status == "sending" else None,
        )
