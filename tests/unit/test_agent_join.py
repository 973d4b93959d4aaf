"""The agent's join loop against fake scheduler replicas (real grpc.aio servers on loopback): a
report in flight when the agent moves to another replica must not end the reporter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.cluster import ClusterMember
from agent.model import Container, ContainerConfig
from common import transport
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg


class Replica(pbg.SchedulerServicer):
    def __init__(self, hang: bool) -> None:
        self.hang = hang  # every ReportTasks hangs past its deadline (a partitioned replica)
        self.reports: list[pb.ReportTasksRequest] = []

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        return pb.RegisterResponse(lease_id=7, heartbeat_ms=200, ttl_s=3)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse(ok=True)

    async def ReportTasks(self, request: pb.ReportTasksRequest, context: Any) -> pb.Empty:
        if self.hang:
            await asyncio.sleep(30)
        self.reports.append(request)
        return pb.Empty()


class Manager:
    def __init__(self) -> None:
        self.on_change: list[Any] = []
        cfg = ContainerConfig(image="busybox", labels={"dockyard.task": "t1", "dockyard.service": "s"})
        self.containers = [Container(id="c1", name="s.1.t1", created=0.0, config=cfg, image_id="i",
                                     image_ref="busybox", snapshot="")]

    def listing(self, all_: bool = False) -> list[Container]:
        return list(self.containers)


async def _serve(servicer: Replica) -> tuple[grpc.aio.Server, str]:
    server = transport.server(transport.SCHEDULER)
    pbg.add_SchedulerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = transport.serve(server, "127.0.0.1:0", transport.SCHEDULER)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.slow
def test_a_report_in_flight_when_moving_to_another_replica_does_not_end_the_reporter(tmp_path: Path) -> None:
    async def main() -> None:
        stuck, good = Replica(hang=True), Replica(hang=False)
        s1, a1 = await _serve(stuck)
        s2, a2 = await _serve(good)
        m = ClusterMember(schedulers=[a1, a2], name="n1", address="127.0.0.1:1", labels={}, root=tmp_path,
                          manager=Manager(), socket=str(tmp_path / "none.sock"), metrics_addr="",
                          cgroup_version=2, criu=lambda: False)
        m.start()
        try:
            await asyncio.sleep(1.0)  # registered with the first replica, a report hangs there
            assert m.lease == 7 and not good.reports
            await m.next_replica()  # what the heartbeat loop does when a replica stops answering
            for _ in range(100):
                if good.reports:
                    break
                await asyncio.sleep(0.1)
            assert good.reports, "the reporter died with the old channel"
            reporter = next(t for t in m._tasks if t.get_name() == "report")
            assert not reporter.done()
        finally:
            await m.stop()
            await s1.stop(None)
            await s2.stop(None)

    asyncio.run(main())
