"""The operator CLI as a user runs it: `inventiv ...` in a subprocess against the running API
and worker (an instance really boots on the local provider), exit codes checked as a script
would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from core.settings import Settings
from tests.factories import seed
from tests.gateway.engine import RunningServer
from tests.workflows.helpers import running_worker

MODEL = "cli-model"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Inventiv:
    """`inventiv` with its own config folder (XDG_CONFIG_HOME)."""

    def __init__(self, config_home: Path) -> None:
        self.config_home = config_home

    async def __call__(self, *args: str, stdin: str = "", timeout: float = 90) -> Result:
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.config_home)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inventiv",
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def inventiv(tmp_path: Path) -> Inventiv:
    return Inventiv(tmp_path / "config")


async def test_an_operator_provisions_follows_and_terminates_from_the_shell(
    settings: Settings, sessionmaker: Any, temporal_client: Any, inventiv: Inventiv
) -> None:
    # Health checks far apart: on a loaded machine a slow check must not replace the instance
    # this test drives (health is tested elsewhere).
    settings = settings.model_copy(update={"health_interval_s": 30})
    async with sessionmaker() as session:
        seeded = await seed(session, model=MODEL, engine_args={"model-load-delay-s": 0.5})
    api = RunningServer(create_app(settings), settings.api_port)
    async with running_worker(settings, temporal_client):
        await api.start()
        try:
            email = seeded.user.email
            login = await inventiv(
                "login", "--api-url", api.url, "--email", email, "--password-stdin",
                stdin=seeded.password + "\n",
            )  # fmt: skip
            assert login.code == 0, login.err
            assert email in login.out
            creds = inventiv.config_home / "inventiv" / "credentials.json"
            assert stat.S_IMODE(creds.stat().st_mode) == 0o600
            assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
            assert seeded.password not in creds.read_text()

            listed = await inventiv("deployments", "list", "--json")
            assert listed.code == 0, listed.err
            assert [d["served_name"] for d in listed.json()] == [MODEL]
            table = await inventiv("deployments", "list")
            assert re.search(
                rf"^{seeded.deployment.id}\s+{seeded.deployment.name}\s", table.out, re.M
            )

            # Provision and follow: a progress bar from the event stream, up to 100 % ready.
            provisioned = await inventiv("instances", "provision", MODEL, "--follow")
            assert provisioned.code == 0, provisioned.err + provisioned.out
            bars = re.findall(r"\]\s+(\d+)%\s+(\w+): (\S+)", provisioned.out)
            assert len(bars) >= 3, provisioned.out
            percents = [int(p) for p, _, _ in bars]
            assert percents == sorted(percents) and percents[-1] == 100
            assert bars[-1][1] == "ready"
            assert len({step for _, _, step in bars}) >= 3, "the current step is shown as it moves"
            instance_id = re.search(r"instance ([0-9a-f-]{36})", provisioned.out)[1]  # type: ignore[index]

            shown = await inventiv("instances", "show", instance_id, "--json")
            assert shown.json()["state"] == "ready" and shown.json()["progress"] == 100
            instances = await inventiv("instances", "list", "--deployment", MODEL, "--json")
            assert [i["id"] for i in instances.json()["items"]] == [instance_id]
            log = await inventiv("instances", "log", instance_id)
            assert log.code == 0
            assert re.search(r"^STARTED_AT\s+STEP\s+STATUS", log.out, re.M)
            assert "provider_create" in log.out and "succeeded" in log.out
            keys = await inventiv("keys", "list")
            assert seeded.api_key_row.prefix in keys.out
            costs = await inventiv("costs", "--json")
            assert costs.code == 0
            assert costs.json()["spend_rate_per_hour"] == [{"currency": "EUR", "amount": 1.0}]
            costs_table = await inventiv("costs")
            assert "spending now: 1.00 EUR/h" in costs_table.out
            usage = await inventiv("usage", "--group-by", "model")
            assert usage.code == 0 and "total: 0 requests" in usage.out

            terminated = await inventiv("instances", "terminate", instance_id, "--follow", "--json")
            assert terminated.code == 0, terminated.err
            states = [json.loads(line)["state"] for line in terminated.out.splitlines()]
            assert states[-1] == "terminated"

            # Exit codes a script can rely on.
            again = await inventiv("instances", "terminate", instance_id)
            assert (again.code, "409" in again.err) == (5, True), again
            missing = await inventiv("instances", "show", str(uuid.uuid4()))
            assert missing.code == 4, missing
            unknown = await inventiv("deployments", "show", "no-such-deployment")
            assert unknown.code == 4, unknown
            bad = await inventiv("instances", "show", "not-an-id")
            assert bad.code == 2, bad
            usage_error = await inventiv("instances", "frobnicate")
            assert usage_error.code == 2

            logout = await inventiv("logout")
            assert logout.code == 0 and not creds.exists()
            after = await inventiv("deployments", "list")
            assert after.code == 3 and "inventiv login" in after.err
            wrong = await inventiv(
                "login", "--api-url", api.url, "--email", email, "--password-stdin",
                stdin="wrong password\n",
            )  # fmt: skip
            assert wrong.code == 3, wrong
        finally:
            await api.stop()
    down = await inventiv(
        "login", "--api-url", api.url, "--email", "x@example.com", "--password-stdin", stdin="x\n"
    )
    assert down.code == 6 and "cannot reach the API" in down.err
