"""PNG of load, instance count and TTFT over time for a few policies (needs matplotlib)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.autoscale.replay import Outcome, ReplaySettings


def plot(path: str, outcomes: dict[str, Outcome], settings: ReplaySettings) -> None:
    fig, (load, count, ttft) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    first = next(iter(outcomes.values()))
    minutes = [p.t / 60 for p in first.timeline]
    load.plot(minutes, [p.arrivals_rps for p in first.timeline], color="grey")
    load.set_ylabel("arrivals / s")
    for name, outcome in outcomes.items():
        t = [p.t / 60 for p in outcome.timeline]
        style = {"linestyle": "--", "linewidth": 1} if name == "oracle" else {}
        count.step(t, [p.instances for p in outcome.timeline], where="post", label=name, **style)
        ttft.plot(t, [p.ttft_p50_s for p in outcome.timeline], label=name, **style)
    count.set_ylabel("instances")
    count.legend()
    ttft.axhline(settings.slo_ttft_s, color="red", linestyle=":", label="SLO")
    ttft.set_yscale("log")
    ttft.set_ylabel("TTFT p50 per round (s)")
    ttft.set_xlabel("minutes")
    ttft.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
