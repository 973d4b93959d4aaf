"""Who may call this agent's TCP port under mutual TLS, and what a peer agent's grant allows.

- The scheduler (placement, logs, exec, migration steps, recovery) and an admin: every method of
  the Agent, Images and Volumes services.
- Another agent: only the calls a migration makes on its target (``PEER_METHODS``), and each only
  with a migration grant the leader signed for this source, this target and a short time
  (common/grants.py). The servicer then holds the call to the grant's container (``check_peer``).
- Anything else: denied (the Authorizer's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from agent.model import Forbidden
from common import grants, pki, transport
from protos import agent_pb2 as apb
from protos import images_pb2 as ipb
from protos import volumes_pb2 as vpb

# What the source agent of a migration calls on the target (agent/migration.py).
PEER_METHODS = frozenset({
    "/dockyard.agent.Agent/Info", "/dockyard.agent.Agent/InspectImage", "/dockyard.agent.Agent/RestoreContainer",
    "/dockyard.agent.Agent/RemoveContainer", "/dockyard.images.Images/Load",
    "/dockyard.volumes.Volumes/CheckMigration"})


def table() -> dict[str, frozenset[str]]:
    out = {}
    for file in (apb.DESCRIPTOR, ipb.DESCRIPTOR, vpb.DESCRIPTOR):
        for svc in file.services_by_name.values():
            for m in svc.methods:
                name = f"/{svc.full_name}/{m.name}"
                out[name] = frozenset({"scheduler", "admin", *(["agent"] if name in PEER_METHODS else [])})
    return out


def authorizer(bundle: Callable[[], pki.Bundle]) -> transport.Authorizer:
    """``bundle`` gives this node's current certificate (it may be renewed while the agent runs)."""
    first = bundle()
    cluster = pki.subject_of(first.cert_pem).cluster_id

    def vouch(who: transport.Caller, method: str, metadata: Mapping[str, bytes]) -> transport.Caller:
        raw = metadata.get(grants.METADATA)
        if not raw:
            raise PermissionError(f"agent {who.node_id} may call {method.rsplit('/', 1)[-1]} here only "
                                  "with a migration grant from the scheduler")
        b = bundle()
        g = grants.verify(raw if isinstance(raw, bytes) else raw.encode(), ca_pem=b.ca_pem, cluster_id=cluster,
                          caller=who.node_id, me=pki.subject_of(b.cert_pem).node_id)
        return replace(who, grant=g)

    return transport.Authorizer(table(), cluster, vouch={"agent": vouch})


class PeerGrants:
    """What the servicer checks of a peer agent's call beyond the Authorizer: the container it
    names is the grant's, and a grant restores once (a replayed grant cannot make a second copy)."""

    def __init__(self) -> None:
        self.restored: dict[str, float] = {}  # migration id -> the grant's not_after

    @staticmethod
    def peer_grant() -> grants.Grant | None:
        who = transport.caller()
        if who is None or who.role != "agent":
            return None
        assert isinstance(who.grant, grants.Grant)  # the Authorizer vouched for it
        return who.grant

    def check_container(self, name: str) -> None:
        g = self.peer_grant()
        if g is not None and name.lstrip("/") != g.container:
            raise Forbidden(f"the migration grant {g.migration} is for container {g.container}, not {name}")

    def check_restore(self, name: str, restore_id: str, now: float) -> None:
        g = self.peer_grant()
        if g is None:
            return
        if restore_id:
            raise Forbidden("a peer agent may only restore the archive it sends, not a checkpoint here")
        self.check_container(name)
        self.restored = {k: v for k, v in self.restored.items() if v > now}
        if g.migration in self.restored:
            raise Forbidden(f"the migration grant {g.migration} was used to restore once already")
        self.restored[g.migration] = g.not_after
