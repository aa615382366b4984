"""Activities of the instance lifecycle, one class per phase around one shared `InstanceContext`.

provision (spec, request, machine created) -> boot (each boot step, ready) -> health (routing,
health checks, replacement) -> drain -> teardown (terminating, volumes, delete, confirm gone,
terminated, archived).

Every activity is idempotent: transitions are conditional (a repeat is a no-op), provider resources
are found by their instance tag, deletes treat "missing" as success. Long waits heartbeat, so a
dead worker is noticed and a cancelled workflow stops them.
"""

from activities.instance.boot import BootActivities
from activities.instance.context import InstanceContext
from activities.instance.drain import DrainActivities
from activities.instance.health import HealthActivities, StartInstance
from activities.instance.provision import ProvisionActivities
from activities.instance.teardown import TeardownActivities

__all__ = [
    "BootActivities",
    "DrainActivities",
    "HealthActivities",
    "InstanceContext",
    "ProvisionActivities",
    "StartInstance",
    "TeardownActivities",
]
