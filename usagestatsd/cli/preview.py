"""`usagestatsd preview`: the exact report the next cycle would send; sends and writes nothing."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from usagestatsd.config.settings import Settings
from usagestatsd.cycle.pipeline import Disclosure, collect_known_identifiers, prepare_report
from usagestatsd.cycle.refusal import cluster_refusal
from usagestatsd.facts.session import find_session, trusted_uids
from usagestatsd.store.published import (
    cannot_read,
    describe_source,
    read_published,
    service_state_dir,
)
from usagestatsd.store.state import State, StateStore


def _note(text: str) -> None:
    print(f"usagestatsd preview: {text}", file=sys.stderr)


def _service_state(settings: Settings) -> State | None:
    """The service's counters and session_id: its state.json when this user can read it,
    else the document it publishes for every user; None (said why) if neither."""
    published, published_problem = read_published(settings.runtime_dir)
    store = StateStore(service_state_dir(settings, published))
    blocked = cannot_read(store.path, "preview")
    if blocked is None:
        state, state_problem = store.peek()
        if state_problem:
            _note(f"state not readable ({state_problem}); counters shown from zero")
        return state
    if published is not None and published.state_dir == store.directory:
        _note(f"counters and session_id {describe_source(published)}")
        return published.state
    if published_problem:
        blocked += f" (and {published_problem})"
    _note(f"the counters and session_id are the service's, and {blocked}")
    return None


def _trusting_the_service(settings: Settings) -> Settings:
    """Trust the service's own user as the service does: its ray_user may be set only in its
    unit's environment (`setup --apply`), which this command never sees. The user is the
    owner of the document it publishes (only it and root may write its runtime directory)."""
    if settings.ray_user is not None:
        return settings
    published, _ = read_published(settings.runtime_dir)
    owner = published.owner_uid if published else None
    if owner is None or owner == 0:
        return settings
    return replace(settings, ray_user=owner)


async def preview(settings: Settings, withheld: tuple[str, ...] = ()) -> int:
    """Print the report body on stdout (notes on stderr); 1 when nothing would be sent."""
    settings = _trusting_the_service(settings)
    found = find_session(settings.temp_root, trusted_uids(settings.ray_user))
    if found.session is None:
        _note(f"no Ray session under {settings.temp_root}: nothing would be sent")
        return 1
    session = found.session
    state = _service_state(settings)
    if state is None:
        return 1
    disclosure = Disclosure.of(settings, collect_known_identifiers(), withheld)
    prepared = await prepare_report(settings, session, state, disclosure, int(time.time() * 1000))
    for problem in prepared.facts.problems:
        _note(f"{problem.source}: {problem.problem} (its fields are null)")
    refusal = cluster_refusal(prepared.facts)
    if refusal:
        _note(f"session {session.name} would not be reported: {refusal.message}")
        return 1
    for redaction in prepared.redactions:
        _note(f"privacy guard removed {redaction.field} ({redaction.reason})")
    for name, why in prepared.blanked.items():
        _note(f"{name} is sent as null: {why}")
    unassigned = state.session is None or state.session.key != session.key
    if unassigned and not (prepared.facts.provider and prepared.facts.provider.cluster_id):
        _note(
            "no report sent for this session yet: its session_id is assigned at the "
            "first report, so the one shown is only an example"
        )
    sys.stdout.buffer.write(prepared.body + b"\n")
    sys.stdout.flush()
    return 0
