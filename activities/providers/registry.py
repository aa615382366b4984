"""Which provider adapters are enabled: an adapter is on only when its SDK and credentials exist.

`local` is always on. Scaleway needs the `scaleway` SDK and INVENTIV_SCALEWAY_ACCESS_KEY,
_SECRET_KEY and _PROJECT_ID; AWS needs `boto3` and INVENTIV_AWS_ACCESS_KEY_ID and
_SECRET_ACCESS_KEY; bare metal needs `asyncssh`, INVENTIV_SSH_ENABLED=true and the database
(its hosts live there). The start-up log says which are on and why the others are off; it never
prints a credential.
"""

from __future__ import annotations

import logging

from activities.providers.base import Compute, InvalidRequestError
from activities.providers.local import LocalCompute
from activities.providers.settings import AWSSettings, ScalewaySettings, SSHSettings
from core.settings import Settings

log = logging.getLogger(__name__)


def build_providers(
    settings: Settings,
    *,
    scaleway: ScalewaySettings | None = None,
    aws: AWSSettings | None = None,
    ssh: SSHSettings | None = None,
) -> dict[str, Compute]:
    """Adapters by provider kind (provider settings from the environment unless given)."""
    providers: dict[str, Compute] = {"local": LocalCompute(settings)}
    disabled: dict[str, str] = {}

    scaleway = scaleway or ScalewaySettings()
    if not scaleway.configured:
        disabled["scaleway"] = "INVENTIV_SCALEWAY_ACCESS_KEY, _SECRET_KEY or _PROJECT_ID unset"
    else:
        try:
            from activities.providers.scaleway import ScalewayCompute

            providers["scaleway"] = ScalewayCompute(scaleway)
        except ImportError:
            disabled["scaleway"] = "the scaleway SDK is not installed"
        except InvalidRequestError as exc:
            disabled["scaleway"] = str(exc)

    aws = aws or AWSSettings()
    if not aws.configured:
        disabled["aws"] = "INVENTIV_AWS_ACCESS_KEY_ID or _SECRET_ACCESS_KEY unset"
    else:
        try:
            from activities.providers.aws import AWSCompute

            providers["aws"] = AWSCompute(aws)
        except ImportError:
            disabled["aws"] = "boto3 is not installed"

    ssh = ssh or SSHSettings()
    if not ssh.enabled:
        disabled["ssh"] = "INVENTIV_SSH_ENABLED is not true"
    elif not settings.database_url:
        disabled["ssh"] = "no database for the bare-metal host registry"
    else:
        try:
            from activities.providers.ssh import SSHCompute

            providers["ssh"] = SSHCompute(ssh, settings.database_url)
        except ImportError:
            disabled["ssh"] = "asyncssh is not installed"

    log.info("providers enabled: %s", ", ".join(sorted(providers)))
    for kind, reason in sorted(disabled.items()):
        log.info("provider %s disabled: %s", kind, reason)
    return providers
