"""Real processes sharing one database: one-click unsubscribes never fail while a send, a slow
feed fetch and a streaming export run (benchmarks/concurrent_load.py, with small numbers and
gates instead of delays: the feed answers and the sink lets its held message go only after
the last POST)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import concurrent_load  # noqa: E402 - the benchmark's scenario, run here with small numbers


def test_one_click_unsubscribes_never_fail_while_a_send_a_slow_fetch_and_an_export_run(
    db_url: str, tmp_path: Path
) -> None:
    subscribers, posts = 2000, 240
    result = concurrent_load.run(db_url, tmp_path, subscribers=subscribers, posts=posts, clients=12, feed_delay=None)
    concurrent_load.report(db_url.split(":")[0], result, posts, 12)  # shown with pytest -s
    assert result.failures == []
    assert len(result.latencies) == posts and result.unsubscribed == posts
    assert {name: code for name, (code, _) in result.outputs.items()} == {"fetch": 0, "send": 0, "export": 0}
    assert "Slow feed: 1 added" in result.outputs["fetch"][1]
    assert result.export_lines == subscribers + 1  # one consistent snapshot: header + every subscriber
    # Everyone still subscribed got the issue once; nobody got it twice.
    assert max(result.received.values()) == 1 and len(result.received) >= subscribers - posts
