"""`python -m agent.sim MODEL --port PORT [vLLM flags]`: the simulator, started like `vllm serve`.

Like vLLM, the HTTP port opens only once the (simulated) model load is over.
"""

from __future__ import annotations

import logging
import sys
import time

import uvicorn

from agent.sim.config import parse_args
from agent.sim.server import create_app


def main(argv: list[str] | None = None) -> None:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)s %(asctime)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    log = logging.getLogger("agent.sim")
    if config.ignored_args:
        log.info("ignoring flags the simulator does not model: %s", " ".join(config.ignored_args))
    log.info(
        "Loading model %s (served as %s), max_num_seqs=%d, kv cache %d tokens",
        config.model,
        ", ".join(config.served_names),
        config.max_num_seqs,
        config.kv_cache_tokens,
    )
    time.sleep(config.model_load_delay_s + config.fault_slow_start_s)
    log.info("Model loaded; starting API server on http://%s:%d", config.host, config.port)
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
