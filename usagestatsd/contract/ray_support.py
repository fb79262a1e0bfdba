"""Which Ray versions the daemon can report completely, and the words when it cannot. Pure.

Ray collects usage stats from 1.13 on. The dashboard serves the cluster metadata (the
versions and the start time that say the cluster consented) over HTTP from 2.3 on; 1.13 to
2.2 keep it only in the GCS, where only the provider reads it. A version the daemon cannot
report completely is named (cycle/refusal.py: `status`, STATUS=, one journal warning) and setup
does not route its reporter to the intake (setup/remedies.py), since the daemon would not pass
its reports on.
"""

from __future__ import annotations

from usagestatsd.contract.fields import FIRST_RAY, ray_release

METADATA_OVER_HTTP = (2, 3)  # the first Ray whose dashboard has /api/v0/cluster_metadata


def unsupported(ray_version: str | None, metadata_known: bool) -> str | None:
    """Why a head of `ray_version` cannot be reported, or None (also for an unknown version).

    `metadata_known`: the cluster metadata was read (from the dashboard or the provider).
    """
    release = ray_release(ray_version)
    if release is None:
        return None
    name = f"Ray {release[0]}.{release[1]}"
    if release < FIRST_RAY:
        return (
            f"{name} is not supported: Ray collects usage stats from 1.13 on, so this "
            "cluster has none to report; upgrade Ray to report it"
        )
    if release < METADATA_OVER_HTTP and not metadata_known:
        return (
            f"{name} is not supported without the usagestatsd provider: its dashboard does "
            "not serve the cluster metadata (so the cluster's consent cannot be confirmed), "
            "which only the provider reads from Ray's GCS; start it as `usagestatsd setup` "
            "says"
        )
    return None
