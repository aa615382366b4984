"""Deployment rules a member cannot lift: the engine flag policy (core/engine_flags.py), volume
specs, and who may mark a deployment trusted. Called by api/routers/deployments.py when a
deployment is saved; each problem names its flag or field."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status

from core.engine_flags import engine_flag_problems
from core.models import Deployment, Role, User

MAX_VOLUMES = 8
MAX_VOLUME_GB = 16_384
# "data": the provider's default block volume; then Scaleway's and AWS's own type names.
VOLUME_TYPES = frozenset({"data", "local", "l_ssd", "b_ssd", "sbs_volume", "gp2", "gp3", "io1",
                          "io2", "st1", "sc1"})  # fmt: skip
VOLUME_FIELDS = frozenset({"size_gb", "volume_type", "delete_on_terminate"})


def volume_problems(volumes: Any) -> list[str]:
    if not isinstance(volumes, list):
        return ["engine argument 'volumes' must be a list of volume specs"]
    if len(volumes) > MAX_VOLUMES:
        return [f"at most {MAX_VOLUMES} volumes per instance ({len(volumes)} asked)"]
    problems = []
    for index, volume in enumerate(volumes):
        where = f"volumes[{index}]"
        if not isinstance(volume, dict):
            problems.append(f'{where} must be an object like {{"size_gb": 100}}')
            continue
        unknown = sorted(set(volume) - VOLUME_FIELDS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        size = volume.get("size_gb", 10)
        if isinstance(size, bool) or not isinstance(size, int | float):
            problems.append(f"{where}.size_gb must be a number")
        elif not 1 <= size <= MAX_VOLUME_GB:
            problems.append(f"{where}.size_gb must be between 1 and {MAX_VOLUME_GB}")
        kind = volume.get("volume_type", "data")
        if kind not in VOLUME_TYPES:
            problems.append(
                f"{where}.volume_type {kind!r} is not one of {', '.join(sorted(VOLUME_TYPES))}"
            )
        if not isinstance(volume.get("delete_on_terminate", True), bool):
            problems.append(f"{where}.delete_on_terminate must be true or false")
    return problems


def deployment_problems(deployment: Deployment) -> list[str]:
    """What the engine flags and volume specs break (empty when fine)."""
    flags = {k: v for k, v in deployment.engine_args.items() if k != "volumes"}
    problems = engine_flag_problems(flags, trusted=deployment.trusted)
    if "volumes" in deployment.engine_args:
        problems += volume_problems(deployment.engine_args["volumes"])
    return problems


TRUST_SENSITIVE = frozenset({"trusted", "model", "engine_args"})


def check_may_change(user: User, was_trusted: bool, changes: dict[str, Any]) -> None:
    """Only admins mark a deployment trusted, and only they change what a trusted deployment
    runs (its model and engine flags): 403 otherwise."""
    if user.role == Role.admin:
        return
    if changes.get("trusted") and not was_trusted:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only an admin may mark a deployment trusted"
        )
    touched = sorted(TRUST_SENSITIVE & set(changes))
    if was_trusted and touched:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"only an admin may change {', '.join(touched)} of a trusted deployment",
        )
