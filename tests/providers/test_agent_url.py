"""Outside dev, machines get the API's URL for their bundle and heartbeats only over https: the
worker refuses a plain-http, non-loopback public API URL for a cloud instance (nothing is
provisioned, the instance fails with a message naming the setting) unless explicitly allowed."""

from __future__ import annotations

from typing import Any

from mypy_boto3_ec2 import EC2Client
from sqlmodel import select

from activities.instance.provision import insecure_agent_url
from activities.providers.aws.adapter import AWSCompute
from activities.providers.aws.settings import AWSSettings
from core.models import InstanceAction, InstanceState
from core.settings import Settings
from tests.factories import seed
from tests.workflows.helpers import history, running_worker, wait_state
from workflows.client import create_instance

PLAIN = "http://203.0.113.7:8000"


async def test_a_cloud_instance_is_not_given_a_plain_http_api_url(
    settings: Settings,
    sessionmaker: Any,
    temporal_client: Any,
    aws_settings: AWSSettings,
    ec2: EC2Client,
) -> None:
    async with sessionmaker() as session:
        seeded = await seed(session, provider_kind="aws", instance_type="t3.medium")
    insecure = settings.model_copy(update={"public_api_url": PLAIN})
    async with running_worker(insecure, temporal_client, {"aws": AWSCompute(aws_settings)}):
        async with sessionmaker() as session:
            instance = await create_instance(
                session, temporal_client, settings.task_queue, deployment=seeded.deployment
            )
        failed = await wait_state(
            sessionmaker, instance.id, {InstanceState.startup_failed, InstanceState.terminated}
        )
    assert InstanceState.startup_failed in await history(sessionmaker, instance.id)
    assert failed.provider_resource_id is None
    tag = [{"Name": "tag:inventiv-instance-id", "Values": [str(instance.id)]}]
    assert ec2.describe_instances(Filters=tag)["Reservations"] == []  # type: ignore[arg-type]
    async with sessionmaker() as session:
        errors = (
            await session.exec(
                select(InstanceAction.error).where(InstanceAction.instance_id == instance.id)
            )
        ).all()
    assert any(e and f"plain-http API URL {PLAIN}" in e and "INVENTIV_PUBLIC_API_URL" in e
               for e in errors), errors  # fmt: skip


def test_what_the_rule_lets_through() -> None:
    strict = Settings()
    allowed = Settings(allow_insecure_agent_url=True)
    assert insecure_agent_url(PLAIN, "aws", strict) is not None
    assert insecure_agent_url(PLAIN, "ssh", strict) is not None
    assert insecure_agent_url("http://api.example.com", "scaleway", strict) is not None
    assert insecure_agent_url(PLAIN, "aws", allowed) is None  # explicitly allowed
    assert insecure_agent_url("https://api.example.com", "aws", strict) is None
    assert insecure_agent_url(PLAIN, "local", strict) is None  # dev: the same host
    assert insecure_agent_url("http://127.0.0.1:8000", "ssh", strict) is None  # never leaves it
    assert insecure_agent_url("http://localhost:8000", "aws", strict) is None
    assert insecure_agent_url("http://[::1]:8000", "aws", strict) is None
