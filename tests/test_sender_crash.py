"""What must survive a process: kill -9 mid-send and resume, concurrent senders.

Each test runs `python -m newsletter send` as a child process against the real
aiosmtpd fixture, whose gate holds the answers to DATA until the test opens it: the kill
lands, or the second sender starts, while messages are on the wire, however slow the
machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import Gate, SmtpServer
from sending_support import ROOT, add_subscribers, build_issue, cli, deliveries, issue_status, start_cli
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.models import Lock

# `newsletter send` as if on another machine: its leases name the host "elsewhere", so the
# others judge it by its lease alone (on one host they would ask the kernel about its pid).
ELSEWHERE = (
    "import sys; from newsletter import cli, locks; locks.HOST = 'elsewhere'; sys.argv[0] = 'newsletter'; cli.main()"
)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_kill_9_mid_send_then_resume_mails_nobody_twice_and_skips_nobody(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 150)
    gate = smtp_server.faults.gate = Gate(free=20)
    proc = start_cli(config_path, "send", "--week", week)
    try:
        # 20 accepted, then every connection waits for its answer: the kill lands mid-send.
        gate.wait_held(settings.smtp.concurrency)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        stop(proc)
    gate.open(drop=True)  # the server lost the messages it held (the kill cut their connections)
    smtp_server.faults.gate = None
    first = Counter(smtp_server.recipients())
    assert len(first) == 20 and max(first.values()) == 1
    ambiguous = {e for e, d in deliveries(sessions, week).items() if d.status == "sending"}
    assert 0 < len(ambiguous) <= settings.smtp.concurrency

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
    # Only an ambiguous one may arrive twice: the server took it, but the kill came before
    # the sender recorded the answer.
    assert all(final[e] == 1 for e in emails if e not in ambiguous)
    assert issue_status(sessions, week) == "sent"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: see the next test
def test_two_senders_on_postgresql_share_the_work(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 300)
    gate = smtp_server.faults.gate = Gate()
    procs = [start_cli(config_path, "send", "--week", week) for _ in range(2)]
    try:
        # Each sender has at most `concurrency` messages on the wire: more held means both are sending.
        gate.wait_held(settings.smtp.concurrency + 1)
        gate.open()
        outs = [p.communicate(timeout=120) for p in procs]
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
def test_a_second_sender_on_sqlite_is_told_to_wait(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 40)
    gate = smtp_server.faults.gate = Gate(free=4)
    first = start_cli(config_path, "send", "--week", week)
    try:
        gate.wait_held()  # the first sender is mid-send until the gate opens
        second = cli(config_path, "send", "--week", week)
        gate.open()
        assert second.returncode == 1
        assert second.stderr == (
            f"Error: another `newsletter send` (process {first.pid}) is sending from this "
            f"SQLite database; wait for it to finish (several senders at once need "
            f"PostgreSQL)\n"
        )
        assert first.wait(timeout=120) == 0
    finally:
        stop(first)
    assert Counter(smtp_server.recipients()) == Counter(emails)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_sender_killed_on_another_host_leaves_its_reservations_to_the_other_after_its_lease(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    lease = 3  # seconds, instead of 120: the test waits for it to lapse
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(
        text.replace("[delivery]\n", f"[delivery]\nsender_lease_seconds = {lease}\n"), encoding="utf-8"
    )
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 300)
    gate = smtp_server.faults.gate = Gate()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    remote = subprocess.Popen(
        [sys.executable, "-c", ELSEWHERE, "--config", str(config_path), "send", "--week", week],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    local = start_cli(config_path, "send", "--week", week)
    try:
        # Every connection of both senders waits at the gate: each has a batch reserved
        # and `concurrency` messages on the wire when the remote one dies.
        gate.wait_held(2 * settings.smtp.concurrency)
        remote.kill()
        remote.communicate(timeout=10)
        rows = deliveries(sessions, week)
        dead = {d.claimed_by for d in rows.values() if d.claimed_by.startswith("elsewhere:")}
        assert len(dead) == 1
        (holder,) = dead
        reserved = {e for e, d in rows.items() if d.claimed_by == holder and d.status == "pending"}
        ambiguous = {e for e, d in rows.items() if d.claimed_by == holder and d.status == "sending"}
        assert reserved and 0 < len(ambiguous) <= settings.smtp.concurrency
        gate.open()  # the server took what it held, the dead sender's messages too: it never heard the reply
        out = local.communicate(timeout=120)
        assert local.returncode == 0, out
    finally:
        stop(remote)
        stop(local)
    got = Counter(smtp_server.recipients())
    assert max(got.values()) == 1  # nobody twice
    # Everyone else got it, the dead sender's reservations included; its messages on the wire
    # may or may not have been taken (the kill cut their connections before any reply).
    assert set(emails) - ambiguous <= set(got) <= set(emails)
    final = deliveries(sessions, week)
    assert {e for e, d in final.items() if d.status == "sending"} == ambiguous  # listed, never resent
    assert all(final[e].status == "sent" for e in set(emails) - ambiguous)
    assert f"{len(ambiguous)} deliveries still open ({len(ambiguous)} ambiguous)" in out[0]
    # Its reservations were taken over by the survivor, and only once its lease had lapsed.
    with sessions.begin() as s:
        expired = s.scalar(select(Lock.expires_at).where(Lock.holder == holder))
    assert expired is not None
    taken = [final[e] for e in reserved]
    assert all(d.claimed_by not in ("", holder) and d.claimed_at >= expired for d in taken)
