"""The README's settings tables, generated from the pydantic-settings classes themselves, so the
documentation cannot drift from the code (tests/test_readme.py compares them)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pydantic_settings import BaseSettings

from activities.providers.images import WorkerImageSettings
from activities.providers.registry import PROVIDERS
from agent.settings import AgentSettings
from core.observability import ObservabilitySettings
from core.settings import Settings
from gateway.settings import GatewaySettings

SECTIONS: list[tuple[str, type[BaseSettings]]] = [
    ("Control plane (API, worker, `inventiv dev`)", Settings),
    ("Gateway", GatewaySettings),
    ("Node agent (on each GPU machine)", AgentSettings),
    # One section per registered provider kind, in the registry's order.
    *((f"{spec.title} provider", spec.settings) for spec in PROVIDERS.values()),
    ("Worker images (GPU flavors, every cloud provider)", WorkerImageSettings),
    (
        "Monitoring (Prometheus scraping, the worker's metrics, budgets, traces)",
        ObservabilitySettings,
    ),
]
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _env_names(cls: type[BaseSettings], name: str) -> str:
    field = cls.model_fields[name]
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = [f"{prefix}{name}".upper()]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        names = [str(c) for c in choices]
    return " / ".join(f"`{n}`" for n in names)


def _default(cls: type[BaseSettings], name: str) -> str:
    field = cls.model_fields[name]
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None or value == "":
        return "—"
    text = str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
    return f"`{text}`".replace("|", "\\|")


def render() -> str:
    parts = [BEGIN]
    for title, cls in SECTIONS:
        parts += [f"\n**{title}**\n", "| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
            parts.append(f"| {_env_names(cls, name)} | {_default(cls, name)} | {meaning} |")
    parts.append(END)
    return "\n".join(parts)


def update(readme: Path) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _m: render(), text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="replace the block in this README")
    args = parser.parse_args()
    if args.write:
        update(args.write)
    else:
        print(render())


if __name__ == "__main__":
    main()
