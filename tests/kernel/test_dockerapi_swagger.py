"""Docker's swagger (API 1.45) as the judge of what we send: inspect and list JSON of containers,
images, volumes and networks, /info and /version, checked for types, enums and keys unknown to
Docker (tests/swagger.py), on objects made with most of what the API takes."""

from __future__ import annotations

import docker as dockerpy
import pytest

from tests.agent_harness import AgentProcess
from tests.swagger import response_problems

pytestmark = pytest.mark.root


@pytest.mark.slow
def test_main_objects_match_dockers_schemas(clean_agent: AgentProcess) -> None:
    a = clean_agent
    c = dockerpy.APIClient(base_url=f"unix://{a.docker_socket}", version="1.45")
    try:
        c.create_volume("swv", labels={"k": "v"})
        net = c.create_network("swnet", labels={"k": "v"})["Id"]
        hc = c.create_host_config(
            binds=["swv:/data"], tmpfs={"/t": "size=1m"}, port_bindings={80: ("127.0.0.1", None)},
            cap_add=["NET_ADMIN"], dns=["10.0.0.1"], extra_hosts={"db": "10.0.0.2"}, shm_size="2m",
            ulimits=[dockerpy.types.Ulimit(name="nofile", soft=100, hard=200)], group_add=["1000"],
            sysctls={"net.core.somaxconn": "512"}, read_only=False, network_mode="swnet",
            log_config=dockerpy.types.LogConfig(type="json-file", config={"max-size": "1m"}),
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
        cid = c.create_container(
            "busybox", "sleep 60", name="swc", host_config=hc, ports=[80], labels={"a": "b"},
            healthcheck={"Test": ["CMD", "true"], "Interval": 1_000_000_000},
            networking_config=c.create_networking_config({"swnet": c.create_endpoint_config(aliases=["sw"])}))["Id"]
        c.start(cid)
        stopped = c.create_container("busybox", "true", name="swstopped")["Id"]
        found: list[str] = []
        found += response_problems("/containers/{id}/json", c.inspect_container(cid))
        found += response_problems("/containers/{id}/json", c.inspect_container(stopped))
        found += response_problems("/containers/json", c.containers(all=True))
        found += response_problems("/images/json", c.images())
        found += response_problems("/images/{name}/json", c.inspect_image("busybox"))
        found += response_problems("/volumes", c.volumes())
        found += response_problems("/volumes/{name}", c.inspect_volume("swv"))
        found += response_problems("/networks", c.networks())
        for n in ("bridge", "host", "none", net):
            found += response_problems("/networks/{id}", c.inspect_network(n))
        found += response_problems("/info", c.info())
        found += response_problems("/version", c.version())
        found += response_problems("/system/df", c.df())
        assert not found, "\n".join(found)
    finally:
        for ref in ("swc", "swstopped"):
            with _quiet():
                c.remove_container(ref, force=True)
        with _quiet():
            c.remove_network("swnet")
        with _quiet():
            c.remove_volume("swv")
        c.close()


def _quiet() -> object:
    import contextlib

    return contextlib.suppress(dockerpy.errors.APIError)
