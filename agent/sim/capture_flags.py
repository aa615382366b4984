"""Captures the flags real vLLM accepts, so the simulator refuses the others as vLLM does.

Run with the interpreter of a vLLM install (`make vllm-cpu` makes one):

    $VLLM_VENV/bin/python agent/sim/capture_flags.py

It builds the argument parser of `python -m vllm.entrypoints.openai.api_server` (what `vllm
serve` also uses) and writes every option string, `--no-X` forms included, to
agent/sim/vllm_flags.json, which is committed: the simulator needs no vLLM to read it.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

FLAGS_FILE = Path(__file__).with_name("vllm_flags.json")


def capture() -> dict[str, object]:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    flags = sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    )
    return {"vllm_version": version("vllm-cpu"), "flags": flags}


if __name__ == "__main__":
    FLAGS_FILE.write_text(json.dumps(capture(), indent=1) + "\n")
    print(f"wrote {FLAGS_FILE}")
