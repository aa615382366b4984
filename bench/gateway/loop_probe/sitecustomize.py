"""A probe for the gateway's pauses, loaded by any Python started with this folder on PYTHONPATH
(the benchmark passes its PYTHONPATH to the gateway):

    PYTHONPATH=bench/gateway/loop_probe python -m bench.gateway.run --case many-keys ...

In a process with INVENTIV_GATEWAY_PORT set (the gateway), it times every garbage collection
and the event loop's lag (how late a 1 ms sleep wakes), and writes both every 2 s to
$LOOP_PROBE_DIR/gateway-PID.txt (default /tmp). LOOP_PROBE_GC_THRESHOLD=700,10,10 sets the
collector's thresholds and keeps the gateway from changing them (a "before" run of the same code).
"""

import collections
import gc
import os
import threading
import time

if os.environ.get("INVENTIV_GATEWAY_PORT"):
    import asyncio

    import uvloop

    _collections: dict[int, list[float]] = collections.defaultdict(list)
    _lags: collections.Counter[int] = collections.Counter()  # whole ms of lateness -> count
    _started = [0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            _collections[info["generation"]].append(time.perf_counter() - _started[0])

    gc.callbacks.append(_on_gc)
    if os.environ.get("LOOP_PROBE_GC_THRESHOLD"):
        gc.set_threshold(*map(int, os.environ["LOOP_PROBE_GC_THRESHOLD"].split(",")))
        gc.set_threshold = lambda *_: None  # type: ignore[assignment]

    async def _watch_lag() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            _lags[min(int((time.perf_counter() - before - 0.001) * 1000), 100)] += 1

    _uvloop_run = uvloop.run

    def _run(main, **kwargs):  # type: ignore[no-untyped-def]
        async def watched():  # type: ignore[no-untyped-def]
            watcher = asyncio.ensure_future(_watch_lag())
            try:
                return await main
            finally:
                watcher.cancel()

        return _uvloop_run(watched(), **kwargs)

    uvloop.run = _run

    def _write() -> None:
        path = os.path.join(os.environ.get("LOOP_PROBE_DIR", "/tmp"), f"gateway-{os.getpid()}.txt")
        while True:
            time.sleep(2)
            lines = []
            for generation, pauses in sorted(_collections.items()):
                lines.append(
                    f"gc generation {generation}: {len(pauses)} collections, "
                    f"{sum(pauses) * 1000:.1f} ms in all, longest {max(pauses) * 1000:.2f} ms"
                )
            lines.append(f"loop lag, whole ms -> times: {sorted(_lags.items())}")
            with open(path, "w") as out:
                out.write("\n".join(lines) + "\n")

    threading.Thread(target=_write, daemon=True).start()
