"""What must survive a process: kill -9 mid-send and resume, concurrent senders.

Each test runs `python -m newsletter send` as a child process against the real
aiosmtpd fixture, slowed down (`faults.delay`) so the kill lands mid-send.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from tests.conftest import SmtpServer
from tests.sending_support import add_subscribers, build_issue, cli, deliveries, issue_status, start_cli


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def stop(proc) -> None:  # type: ignore[no-untyped-def]
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_kill_9_mid_send_then_resume_mails_nobody_twice_and_skips_nobody(
        config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 150)
    smtp_server.faults.delay = 0.02
    proc = start_cli(config_path, "send", "--week", week)
    try:
        wait_for(lambda: len(smtp_server.messages) >= 20 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        stop(proc)
    time.sleep(0.2)  # let the server finish with the connections the kill cut
    first = Counter(smtp_server.recipients())
    assert max(first.values()) == 1 and len(first) < len(emails)
    ambiguous = {e for e, d in deliveries(sessions, week).items() if d.status == "sending"}
    assert 0 < len(ambiguous) <= settings.smtp.concurrency

    smtp_server.faults.delay = 0
    rerun = cli(config_path, "send", "--week", week)
    assert rerun.returncode == 0, rerun.stderr
    got = Counter(smtp_server.recipients())
    assert max(got.values()) == 1  # nobody twice
    assert set(got) | ambiguous == set(emails)  # nobody skipped, apart from the ambiguous
    assert f"{len(ambiguous)} deliveries still open ({len(ambiguous)} ambiguous)" in rerun.stdout

    stats = cli(config_path, "stats", "--week", week)
    table = dict(line.split("\t") for line in stats.stdout.splitlines() if "\t" in line)
    assert table["ambiguous"] == str(len(ambiguous)) and table["pending"] == "0"
    assert all(e in stats.stdout for e in ambiguous)
    assert issue_status(sessions, week) == "sending"

    resend = cli(config_path, "send", "--week", week, "--resend-ambiguous")
    assert resend.returncode == 0, resend.stderr
    final = Counter(smtp_server.recipients())
    assert set(final) == set(emails)
    assert all(final[e] == 1 for e in emails if e not in ambiguous)
    assert issue_status(sessions, week) == "sent"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: see the next test
def test_two_senders_on_postgresql_share_the_work(config_path: Path, sessions: sessionmaker[Session],
                                                 settings: Settings, smtp_server: SmtpServer) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 300)
    # ~4 s of sending, so the second process (started together, but a Python start-up takes
    # a second on a loaded machine) overlaps the first and takes its share.
    smtp_server.faults.delay = 0.05
    procs = [start_cli(config_path, "send", "--week", week) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert Counter(smtp_server.recipients()) == Counter(emails)  # exactly one each
    rows = deliveries(sessions, week)
    assert {d.status for d in rows.values()} == {"sent"}
    assert len({d.claimed_by for d in rows.values()}) == 2  # both did part of it
    assert issue_status(sessions, week) == "sent"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_second_sender_on_sqlite_is_told_to_wait(config_path: Path, sessions: sessionmaker[Session],
                                                  settings: Settings, smtp_server: SmtpServer) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 40)
    smtp_server.faults.delay = 0.25
    first = start_cli(config_path, "send", "--week", week)
    try:
        wait_for(lambda: len(smtp_server.messages) >= 4 or first.poll() is not None)
        second = cli(config_path, "send", "--week", week)
        assert second.returncode == 1
        assert second.stderr == (f"Error: another `newsletter send` (process {first.pid}) is sending from this "
                                 f"SQLite database; wait for it to finish (several senders at once need "
                                 f"PostgreSQL)\n")
        assert first.wait(timeout=60) == 0
    finally:
        stop(first)
    assert Counter(smtp_server.recipients()) == Counter(emails)
