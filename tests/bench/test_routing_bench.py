"""bench/routing's client and report, without a fleet: the session each request names, a
conversation's history carried to the next turn, partial runs kept apart from the full results,
--merge keeping each workload's rows with the run they came from, and the goals of issue 16."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx
import pytest

from bench.routing import run
from bench.routing.run import Row
from bench.routing.workloads import Turn, Workload

FLEET = run.Fleet(4, 131072)


def stream(*tokens: str) -> bytes:
    chunks = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": t}}]}) + "\n\n"
        for t in tokens
    ]
    return ("".join(chunks) + "data: [DONE]\n\n").encode()


def test_send_names_the_session_both_ways_and_carries_the_history() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=stream("abcd", " efgh"))

    follower = Turn(0.0, [], 8, "conversation7", next_user_message="next")
    first = Turn(0.0, [{"role": "user", "content": "hello"}], 8, "conversation7")
    first.followers.append(follower)

    async def go() -> run.Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            return await run.send(client, "http://router", "sk-key", first)

    outcome = asyncio.run(go())
    assert outcome.error is None and outcome.output_tokens == 2 and outcome.ttft_s is not None
    request = seen[0]
    # vllm-router's consistent_hash and sticky_least_loaded read the header; our sticky_user the
    # body's `user`.
    assert request.headers["x-session-id"] == "conversation7"
    assert request.headers["authorization"] == "Bearer sk-key"
    assert json.loads(request.content)["user"] == "conversation7"
    assert follower.messages == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "abcd efgh"},
        {"role": "user", "content": "next"},
    ]


def test_a_failed_turn_still_gives_the_next_turn_its_history() -> None:
    follower = Turn(0.0, [{"role": "user", "content": "stale"}], 8, "c", next_user_message="next")
    first = Turn(0.0, [{"role": "user", "content": "hello"}], 8, "c")
    first.followers.append(follower)

    async def go() -> run.Outcome:
        transport = httpx.MockTransport(lambda request: httpx.Response(503, content=b"busy"))
        async with httpx.AsyncClient(transport=transport) as client:
            return await run.send(client, "http://router", None, first)

    outcome = asyncio.run(go())
    assert outcome.error == "HTTP 503"
    assert follower.messages[0] == {"role": "user", "content": "hello"}
    assert follower.messages[-1] == {"role": "user", "content": "next"}


def args(**overrides: object) -> argparse.Namespace:
    return argparse.Namespace(**{"quick": False, "merge": False, **overrides})


def workloads(*names: str) -> list[Workload]:
    return [Workload(name, name, []) for name in names]


def test_a_partial_run_does_not_replace_the_full_results() -> None:
    every = workloads(*run.WORKLOADS)
    assert run.results_name(args(), set(), every) == "routing"
    assert run.results_name(args(), {"ours-least_load"}, every) == "routing-partial"
    assert run.results_name(args(quick=True), set(), every) == "routing-partial"
    assert run.results_name(args(), set(), workloads("shared_prefix")) == "routing-partial"
    # --merge writes the full results, keeping what it does not redo.
    assert run.results_name(args(merge=True, quick=True), {"x"}, every[:1]) == "routing"


def row(target: str, workload: str, p50: float, p90: float, tokens: float = 500.0) -> Row:
    return Row(
        target,
        workload,
        requests=10,
        ttft_p50_s=p50,
        ttft_p90_s=p90,
        ttft_p99_s=p90 * 1.5,
        output_tokens_per_s=tokens,
        engine_hit_rate=0.5,
        requests_per_engine=[3, 2, 3, 2],
    )


def test_merge_keeps_each_workload_with_the_run_it_came_from(tmp_path: Path) -> None:
    # A file from before per-workload runs: one date and machine for the whole file.
    old = {
        "meta": {
            "when": "2026-12-01 22:28 UTC",
            "machine": "x86_64, 2 CPUs (load average ~7)",
            "fleet": run.new_meta(FLEET)["fleet"],
            "workloads": {"shared_prefix": "30 tenants"},
        },
        "rows": [
            vars(row("ours-least_load", "shared_prefix", 1.0, 2.5)),
            vars(row("ours-prefix_aware", "shared_prefix", 0.1, 0.4)),
            vars(row("vllm-router-consistent_hash", "shared_prefix", 50.0, 100.0)),
        ],
    }
    (tmp_path / "routing.json").write_text(json.dumps(old))
    earlier, meta = run.earlier_results(tmp_path / "routing.json", run.new_meta(FLEET))
    assert meta["runs"]["shared_prefix"]["when"] == "2026-12-01 22:28 UTC"
    meta["workloads"]["azure_conv_trace"] = "first 300 requests"
    meta["runs"]["azure_conv_trace"] = {
        "when": "2026-12-03 05:00 UTC",
        "machine": "m",
        "load": "1.0-2.0",
    }
    now = [
        row("vllm-router-consistent_hash", "shared_prefix", 1.5, 2.0),  # redone
        row("ours-least_load", "azure_conv_trace", 0.080, 0.110),
        row("ours-prefix_aware", "azure_conv_trace", 0.082, 0.112),
    ]
    run.write_results(run.merged(earlier, now), meta, tmp_path, "routing")
    written = json.loads((tmp_path / "routing.json").read_text())
    pairs = [(r["target"], r["workload"]) for r in written["rows"]]
    assert pairs == [
        ("ours-least_load", "shared_prefix"),
        ("ours-prefix_aware", "shared_prefix"),
        ("vllm-router-consistent_hash", "shared_prefix"),
        ("ours-least_load", "azure_conv_trace"),
        ("ours-prefix_aware", "azure_conv_trace"),
    ]
    assert written["rows"][2]["ttft_p90_s"] == 2.0  # the redone row, not the old one
    markdown = (tmp_path / "routing.md").read_text()
    assert (
        "Measured in the run started 2026-12-01 22:28 UTC, x86_64, 2 CPUs (load average ~7)."
        in markdown
    )
    assert (
        "Measured in the run started 2026-12-03 05:00 UTC, m, load average 1.0-2.0 over its targets."
        in markdown
    )
    assert "## Goals (issue 16)" in markdown
    # Merged again, the runs stay per workload.
    _, again = run.earlier_results(tmp_path / "routing.json", run.new_meta(FLEET))
    assert again["runs"] == meta["runs"]


def test_goal_lines_give_the_figures_met_or_not() -> None:
    lines = run.goal_lines(
        [
            row("ours-least_load", "shared_prefix", 1.0, 2.5, tokens=480),
            row("ours-prefix_aware", "shared_prefix", 0.1, 0.4, tokens=500),
            row("vllm-router-cache_aware", "shared_prefix", 0.5, 0.6, tokens=490),
            row("vllm-router-round_robin", "shared_prefix", 1.0, 2.4, tokens=505),
            row("ours-least_load", "azure_conv_trace", 0.080, 0.110),
            row("ours-prefix_aware", "azure_conv_trace", 0.082, 0.120),
        ]
    )
    assert lines[0].startswith("shared_prefix, p90 TTFT at least 5x lower than least_load")
    assert "6.2x, met" in lines[0]
    assert "best vllm-router-cache_aware 0.60 s against 0.40 s (1.5x), met" in lines[1]
    assert "500 against at most 505 (vllm-router-round_robin), **not met**" in lines[2]
    assert lines[3].startswith("azure_conv_trace, within 5 % of least_load")
    assert "p90 0.120 / 0.110 s = 1.091" in lines[3] and lines[3].endswith("**not met**")


def test_render_only_writes_the_report_again_from_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = run.new_meta(FLEET)
    meta["workloads"]["azure_conv_trace"] = "first 300 requests"
    rows = [
        row("ours-least_load", "azure_conv_trace", 0.0841, 0.110),
        row("ours-prefix_aware", "azure_conv_trace", 0.0862, 0.112),
    ]
    run.write_results(rows, meta, tmp_path, "routing")
    (tmp_path / "routing.md").write_text("stale")
    monkeypatch.setattr("sys.argv", ["run", "--render-only", "--results", str(tmp_path)])
    run.main()
    markdown = (tmp_path / "routing.md").read_text()
    assert markdown.startswith("# Fleet routing benchmark\n\n4 simulated engines")
    # Three digits: a 5 % difference at 0.08 s shows.
    assert "| ours-least_load | 0.084 | 0.110 | 0.165 |" in markdown
    assert "| ours-prefix_aware | 0.086 | 0.112 |" in markdown
    assert json.loads((tmp_path / "routing.json").read_text())["meta"]["fleet"] == meta["fleet"]
