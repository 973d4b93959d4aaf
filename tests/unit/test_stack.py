"""Compose/Swarm stack files: good ones become ServiceSpecs, bad ones name file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from deploy.stack import StackError, load_stack, parse_stack
from scheduler.model import (
    NANO,
    FailureAction,
    NetworkAttachment,
    PortSpec,
    Resources,
    RestartCondition,
    UpdateOrder,
)

FULL = """\
version: "3.8"
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: /docker-entrypoint.sh
    environment:
      - MODE=prod
      - EMPTY=
    ports:
      - "8080:80"
      - "53:53/udp"
      - "9000-9001:9000-9001"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
      interval: 10s
      timeout: 2s
      retries: 3
      start_period: 1m30s
    deploy:
      replicas: 6
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: '0.25', memory: 128m}
      placement:
        constraints:
          - node.labels.zone == a
          - node.hostname != h1
          - node.role == worker
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      update_config:
        parallelism: 2
        delay: 10s
        order: start-first
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.2
      rollback_config:
        parallelism: 0
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 2m
  worker:
    image: busybox
    command: sh -c 'while true; do sleep 1; done'
    environment:
      LEVEL: 3
      DEBUG: false
x-common: &common {a: 1}
"""


def write(tmp_path: Path, text: str, name: str = "stack.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_full_file(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, FULL), "bar")
    assert [s.name for s in stack.services] == ["bar_web", "bar_worker"]
    web = stack.service("web")
    assert web.image == "nginx:1.25"
    assert web.command == ("nginx", "-g", "daemon off;")
    assert web.entrypoint == ("/docker-entrypoint.sh",)
    assert web.env == (("EMPTY", ""), ("MODE", "prod"))
    assert web.ports == (
        PortSpec(80, 8080, "tcp", "ingress"), PortSpec(53, 53, "udp", "ingress"),
        PortSpec(9000, 9000, "tcp", "ingress"), PortSpec(9001, 9001, "tcp", "ingress"),
        PortSpec(443, 8443, "tcp", "host"),
    )
    assert web.replicas == 6
    assert web.resources.limits == Resources(NANO // 2, 512 << 20)
    assert web.resources.reservations == Resources(NANO // 4, 128 << 20)
    assert web.placement.constraints == ("node.labels.zone == a", "node.hostname != h1", "node.role == worker")
    assert web.placement.spread == ("node.labels.zone",)
    assert web.placement.max_replicas_per_node == 2
    u = web.update_config
    assert (u.parallelism, u.delay, u.order, u.failure_action, u.monitor, u.max_failure_ratio) == (
        2, 10.0, UpdateOrder.START_FIRST, FailureAction.ROLLBACK, 30.0, 0.2)
    assert web.rollback_config.parallelism == 0
    r = web.restart_policy
    assert (r.condition, r.delay, r.max_attempts, r.window) == (RestartCondition.ON_FAILURE, 5.0, 3, 120.0)
    assert web.healthcheck is not None and web.healthcheck.test[0] == "CMD"
    assert web.healthcheck.start_period == 90.0 and web.healthcheck.interval == 10.0
    worker = stack.service("worker")
    assert worker.command == ("sh", "-c", "while true; do sleep 1; done")
    assert worker.env == (("DEBUG", "false"), ("LEVEL", "3"))
    assert worker.replicas == 1 and worker.healthcheck is None


def test_minimal_file_and_name_from_file(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, "name: shop\nservices:\n  api:\n    image: api:1\n"))
    assert stack.name == "shop" and stack.services[0].name == "shop_api"
    assert stack.services[0].replicas == 1


@pytest.mark.parametrize(("key", "value", "hint"), [
    ("build", ".", "dockyard image build"), ("depends_on", "[db]", "any order"), ("volumes_from", "[db]", ""),
    ("restart", "always", "deploy.restart_policy"), ("device_cgroup_rules", "['c 1:3 r']", "does not pass on"),
])
def test_unsupported_service_keys_are_refused(tmp_path: Path, key: str, value: str, hint: str) -> None:
    path = write(tmp_path, f"services:\n  web:\n    image: nginx\n    {key}: {value}\n")
    with pytest.raises(StackError) as e:
        load_stack(path, "s")
    assert (e.value.line, e.value.field) == (4, f"services.web.{key}")
    assert str(e.value).startswith(f"{path}:4: services.web.{key}: not supported")
    assert hint in str(e.value)


@pytest.mark.parametrize(("text", "line", "field"), [
    ("configs: {c: {content: x}}\n", 4, "configs.c.content"),  # (secrets and configs: tests/unit/test_objects.py)
    ("secrets: {s: {environment: X}}\n", 4, "secrets.s.environment"),
    ("    healthcheck: {test: [CMD, 'true'], start_interval: 1s}\n", 4, "services.web.healthcheck.start_interval"),
    ("    ports: [{target: 80, host_ip: 127.0.0.1}]\n", 4, "services.web.ports[0].host_ip"),
    ("    deploy: {resources: {reservations: {generic_resources: []}}}\n", 4,
     "services.web.deploy.resources.reservations.generic_resources"),
])
def test_unsupported_keys_elsewhere_are_refused(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = write(tmp_path, "services:\n  web:\n    image: nginx\n" + text)
    with pytest.raises(StackError) as e:
        load_stack(path, "s")
    assert (e.value.line, e.value.field) == (line, field)
    assert "not supported" in e.value.problem


def test_service_keys_reach_the_spec(tmp_path: Path) -> None:
    (tmp_path / "web.env").write_text("FROM_FILE=1\nOVERRIDDEN=file\n")
    stack = load_stack(write(tmp_path, """\
        services:
          web:
            image: nginx
            env_file: web.env
            environment: {OVERRIDDEN: env, FROM_SHELL: }
            hostname: web-host
            user: "1000:1000"
            working_dir: /srv
            stop_signal: SIGINT
            stop_grace_period: 1m
            tty: true
            stdin_open: true
            init: true
            labels: {team: a}
            deploy:
              labels: {tier: front}
              resources: {limits: {pids: 100}}
        """), "s", environ={"FROM_SHELL": "shell"})
    web = stack.service("web")
    assert web.env == (("FROM_FILE", "1"), ("FROM_SHELL", "shell"), ("OVERRIDDEN", "env"))
    assert (web.hostname, web.user, web.workdir, web.stop_signal, web.stop_grace_period) == (
        "web-host", "1000:1000", "/srv", "SIGINT", 60.0)
    assert (web.tty, web.stdin_open, web.init, web.pids_limit) == (True, True, True, 100)
    assert web.container_labels == (("team", "a"),) and web.labels == (("tier", "front"),)


def test_interpolation(tmp_path: Path) -> None:
    text = "services:\n  web:\n    image: nginx:${TAG:-latest}\n    environment: ['A=$$HOME', 'B=${B}']\n"
    stack = parse_stack(text, "s", environ={"B": "b"})
    assert stack.services[0].image == "nginx:latest"
    assert stack.services[0].env == (("A", "$HOME"), ("B", "b"))
    with pytest.raises(StackError, match=r"<stack>:3: services.web.image: required variable TAG is missing a value: set it"):
        parse_stack("services:\n  web:\n    image: nginx:${TAG:?set it}\n", "s", environ={})


def test_digest_is_stable_across_parses(tmp_path: Path) -> None:
    a = load_stack(write(tmp_path, FULL), "bar").service("web")
    b = load_stack(write(tmp_path, FULL, "again.yaml"), "bar").service("web")
    assert a.digest == b.digest


BAD = [
    # (name, body, line, field, message fragment)
    ("unknown service field", """\
        services:
          web:
            image: nginx
            imagee: x
        """, 4, "services.web.imagee", "unknown field"),
    ("typo hint", """\
        services:
          web:
            image: nginx
            deploy:
              replica: 3
        """, 5, "services.web.deploy.replica", "did you mean 'replicas'?"),
    ("bad memory", """\
        services:
          web:
            image: nginx
            deploy:
              resources:
                limits:
                  memory: 12X
        """, 7, "services.web.deploy.resources.limits.memory", "invalid size '12X'"),
    ("bad cpus", """\
        services:
          web:
            image: nginx
            deploy:
              resources:
                reservations:
                  cpus: lots
        """, 7, "services.web.deploy.resources.reservations.cpus", "invalid cpus 'lots'"),
    ("replicas not a number", """\
        services:
          web:
            image: nginx
            deploy:
              replicas: three
        """, 5, "services.web.deploy.replicas", "expected a whole number"),
    ("negative replicas", """\
        services:
          web:
            image: nginx
            deploy: {replicas: -1}
        """, 4, "services.web.deploy.replicas", "at least 0"),
    ("bad constraint", """\
        services:
          web:
            image: nginx
            deploy:
              placement:
                constraints:
                  - node.labels.zone == a
                  - node.labels.zone = b
        """, 8, "services.web.deploy.placement.constraints[1]", "needs == or !="),
    ("unknown constraint key", """\
        services:
          web:
            image: nginx
            deploy:
              placement:
                constraints: [node.colour == red]
        """, 6, "services.web.deploy.placement.constraints[0]", "is not a node attribute"),
    ("bad spread", """\
        services:
          web:
            image: nginx
            deploy:
              placement:
                preferences:
                  - spread: zone
        """, 7, "services.web.deploy.placement.preferences[0].spread", "is not a node attribute"),
    ("bad duration", """\
        services:
          web:
            image: nginx
            deploy:
              update_config:
                delay: 10
        """, 6, "services.web.deploy.update_config.delay", "invalid duration"),
    ("bad order", """\
        services:
          web:
            image: nginx
            deploy:
              update_config:
                order: random
        """, 6, "services.web.deploy.update_config.order", "'random' is not one of stop-first, start-first"),
    ("bad restart condition", """\
        services:
          web:
            image: nginx
            deploy:
              restart_policy: {condition: always}
        """, 5, "services.web.deploy.restart_policy.condition", "not one of none, on-failure, any"),
    ("bad port", """\
        services:
          web:
            image: nginx
            ports:
              - "80"
              - "80:99999"
        """, 6, "services.web.ports[1]", "out of range"),
    ("port twice", """\
        services:
          web:
            image: nginx
            ports: ["80:80", "80:81"]
        """, 4, "services.web.ports", "published twice"),
    ("environment without value", """\
        services:
          web:
            image: nginx
            environment:
              - GOOD=1
              - SECRET
        """, 6, "services.web.environment[1]", "SECRET has no value, and the environment has no SECRET"),
    ("no image", """\
        services:
          web:
            command: ls
        """, 2, "services.web", "no image"),
    ("reservation above limit", """\
        services:
          web:
            image: nginx
            deploy:
              resources:
                limits: {memory: 256M}
                reservations: {memory: 1G}
        """, 7, "services.web.deploy.resources.reservations", "reserves more memory than its limit"),
    ("bad healthcheck test", """\
        services:
          web:
            image: nginx
            healthcheck:
              test: ["curl", "-f", "http://localhost"]
        """, 5, "services.web.healthcheck.test", "starts with CMD"),
    ("bad working_dir", """\
        services:
          web:
            image: nginx
            working_dir: relative/dir
        """, 4, "services.web.working_dir", "not an absolute path"),
    ("bad hostname", """\
        services:
          web:
            image: nginx
            hostname: "under_score"
        """, 4, "services.web.hostname", "invalid hostname"),
    ("missing env_file", """\
        services:
          web:
            image: nginx
            env_file: [nope.env]
        """, 4, "services.web.env_file[0]", "not found"),
    ("global with replicas", """\
        services:
          web:
            image: nginx
            deploy: {mode: global, replicas: 2}
        """, 4, "services.web.deploy.replicas", "one task per node"),
    ("global with max per node", """\
        services:
          web:
            image: nginx
            deploy:
              mode: global
              placement: {max_replicas_per_node: 2}
        """, 6, "services.web.deploy.placement.max_replicas_per_node", "for replicated ones"),
    ("service is a list", """\
        services:
          web: [nginx]
        """, 2, "services.web", "expected a mapping, got a list"),
    ("unknown top level", """\
        services:
          web: {image: nginx}
        service: {}
        """, 3, "service", "unknown field"),
    ("duplicate key", """\
        services:
          web: {image: nginx}
          web: {image: httpd}
        """, 3, "", "duplicate key 'web' (first on line 2)"),
    ("not yaml", """\
        services:
          web: {image: nginx
        """, 3, "", "not valid YAML"),
    ("undeclared network", """\
        services:
          web:
            image: nginx
            networks: [front, back]
        networks:
          front: {}
        """, 4, "services.web.networks[1]", "network 'back' is not declared under the top-level networks: "
                                              "(declared: front)"),
    ("bad subnet", """\
        services:
          web: {image: nginx}
        networks:
          front:
            ipam:
              config:
                - subnet: 10.1.0.0/33
        """, 7, "networks.front.ipam.config[0].subnet", "invalid subnet '10.1.0.0/33'"),
    ("external with driver", """\
        services:
          web: {image: nginx}
        networks:
          shared:
            external: true
            driver: overlay
        """, 4, "networks.shared", "driver cannot be set here"),
    ("attachable network", """\
        services:
          web: {image: nginx}
        networks:
          back:
            attachable: true
        """, 5, "networks.back.attachable", "not supported yet"),
    ("network driver", """\
        services:
          web: {image: nginx}
        networks:
          front: {driver: bridge}
        """, 4, "networks.front.driver", "'bridge' is not one of overlay"),
]


@pytest.mark.parametrize(("name", "body", "line", "field", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_file_line_field(tmp_path: Path, name: str, body: str, line: int, field: str,
                                        fragment: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(StackError) as e:
        load_stack(path, "bar")
    err = e.value
    assert err.file == path, name
    assert err.line == line, f"{name}: {err}"
    assert err.field == field, f"{name}: {err}"
    assert fragment in str(err), f"{name}: {err}"
    assert str(err).startswith(f"{path}:{line}: ")


def test_networks_top_level_and_per_service(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, """\
        services:
          web:
            image: nginx
            networks:
              front:
                aliases: [www, site]
              shared:
          db:
            image: postgres
            networks: [back]
          solo:
            image: busybox
        networks:
          front:
            driver: overlay
            ipam: {config: [{subnet: 10.77.0.0/24}]}
          back:
            labels: {tier: db}
          shared:
            external: true
            name: company-net
        """), "bar")
    nets = {n.key: n for n in stack.networks}
    assert (nets["front"].name, nets["front"].subnet) == ("bar_front", "10.77.0.0/24")
    assert (nets["back"].name, nets["back"].labels) == ("bar_back", (("tier", "db"),))
    assert (nets["shared"].name, nets["shared"].external) == ("company-net", True)
    assert stack.service("web").networks == (NetworkAttachment("bar_front", ("www", "site")),
                                              NetworkAttachment("company-net"))
    assert stack.service("db").networks == (NetworkAttachment("bar_back"),)
    assert stack.service("solo").networks == ()


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="cannot read"):
        load_stack(str(tmp_path / "nope.yaml"), "x")
    with pytest.raises(StackError, match="empty file"):
        load_stack(write(tmp_path, ""), "x")
    with pytest.raises(StackError, match="no stack name"):
        load_stack(write(tmp_path, "services:\n  web: {image: nginx}\n"))
    with pytest.raises(StackError, match="invalid stack name"):
        load_stack(write(tmp_path, "services:\n  web: {image: nginx}\n"), "bad name")


def test_service_keys_reach_the_container_config(tmp_path: Path) -> None:
    from scheduler.dispatch import STOP_TIMEOUT, container_config, stop_timeout
    from scheduler.model import Task

    stack = load_stack(write(tmp_path, """\
        services:
          web:
            image: nginx
            user: nobody
            working_dir: /srv
            stop_signal: SIGINT
            stop_grace_period: 1500ms
            init: true
            tty: true
            labels: {team: a, dockyard.task: forged}
            deploy: {resources: {limits: {pids: 64}}}
          plain: {image: nginx}
        """), "s")
    web = stack.service("web")
    cfg = container_config(Task(service="s_web", slot=1, id="t1", spec_version=web.digest), web, "s")
    assert (cfg.user, cfg.workdir, cfg.stop_signal, cfg.init, cfg.tty, cfg.open_stdin) == (
        "nobody", "/srv", "SIGINT", True, True, False)
    assert cfg.hostname == "s_web.1" and cfg.stop_timeout == 2 and cfg.resources.pids_limit == 64
    assert cfg.labels["team"] == "a" and cfg.labels["dockyard.task"] == "t1"  # ours win over the file's
    assert stop_timeout(stack.service("plain")) == STOP_TIMEOUT


def test_devices_and_privileged_reach_the_container_config(tmp_path: Path) -> None:
    """`devices:` in Compose's short syntax (docker's --device) and `privileged:`."""
    from scheduler.dispatch import container_config
    from scheduler.model import Task

    stack = load_stack(write(tmp_path, """\
        services:
          web:
            image: nginx
            devices: ["/dev/loop0:/dev/xloop:r", /dev/net/tun]
            privileged: true
          plain: {image: nginx}
        """), "s")
    web = stack.service("web")
    assert web.devices == ("/dev/loop0:/dev/xloop:r", "/dev/net/tun") and web.privileged
    cfg = container_config(Task(service="s_web", slot=1, id="t1", spec_version=web.digest), web, "s")
    assert [(d.path_on_host, d.path_in_container, d.permissions) for d in cfg.devices] == [
        ("/dev/loop0", "/dev/xloop", "r"), ("/dev/net/tun", "/dev/net/tun", "rwm")]
    assert cfg.privileged
    plain = stack.service("plain")
    assert not container_config(Task(service="s_plain", slot=1, id="t2", spec_version=plain.digest), plain,
                                "s").devices


@pytest.mark.parametrize(("value", "fragment"), [
    ("[/dev/loop0:/dev/x:rwz]", "invalid device mode 'rwz'"),
    ("[dev/loop0]", "bad format for path: dev/loop0"),
    ("[/a:/b:rw:x]", "invalid device specification"),
    ("/dev/loop0", "expected a list"),
])
def test_bad_devices_name_the_entry(tmp_path: Path, value: str, fragment: str) -> None:
    path = write(tmp_path, f"services:\n  web:\n    image: nginx\n    devices: {value}\n")
    with pytest.raises(StackError) as e:
        load_stack(path, "s")
    assert e.value.line == 4 and e.value.field.startswith("services.web.devices"), str(e.value)
    assert fragment in str(e.value)


def test_later_files_override_as_docker_stack_deploy_merges(tmp_path: Path) -> None:
    from deploy.stack import load_stacks

    base = write(tmp_path, """\
        name: shop
        x-common: &common
          deploy: {replicas: 2, resources: {limits: {memory: 64M}}}
        services:
          web:
            <<: *common
            image: nginx:1
            command: ["nginx", "-g", "daemon off;"]
            environment: [A=1, B=1]
            labels: {team: a}
            ports: ["80:80"]
          api:
            <<: *common
            image: api:1
        """, "base.yaml")
    over = write(tmp_path, """\
        services:
          web:
            image: nginx:2
            command: ["nginx"]
            environment: {B: "2", C: "3"}
            ports: ["80:80", "443:443"]
            deploy: {replicas: 5}
          worker: {image: worker:1}
        """, "prod.yaml")
    stack = load_stacks([base, over])
    web, api = stack.service("web"), stack.service("api")
    assert stack.name == "shop" and [s.name for s in stack.services] == ["shop_web", "shop_api", "shop_worker"]
    assert (web.image, web.command, web.replicas) == ("nginx:2", ("nginx",), 5)
    assert web.resources.limits.memory_bytes == 64 << 20  # kept from the first file's deploy
    assert web.env == (("A", "1"), ("B", "2"), ("C", "3"))
    assert web.container_labels == (("team", "a"),)
    assert [(p.published, p.target) for p in web.ports] == [(80, 80), (443, 443)]
    assert api.replicas == 2  # the anchor both services share was not changed by web's override


def test_an_error_in_a_merged_stack_names_the_file_it_came_from(tmp_path: Path) -> None:
    from deploy.stack import load_stacks

    base = write(tmp_path, "services:\n  web:\n    image: nginx\n    environment: [A=1]\n", "base.yaml")
    over = write(tmp_path, "services:\n  web:\n    deploy:\n      replicas: many\n", "over.yaml")
    with pytest.raises(StackError) as e:
        load_stacks([base, over], "s")
    assert (e.value.file, e.value.line, e.value.field) == (over, 4, "services.web.deploy.replicas")
    env = write(tmp_path, "services:\n  web:\n    environment: [B]\n", "env.yaml")
    with pytest.raises(StackError) as e:
        load_stacks([base, env], "s", environ={})
    assert (e.value.file, e.value.line, e.value.field) == (env, 3, "services.web.environment.B")
    assert load_stacks([base, env], "s", environ={"B": "b"}).services[0].env == (("A", "1"), ("B", "b"))
    bad_base = write(tmp_path, "services:\n  web:\n    image: nginx\n    ports: ['80:99999']\n", "bad.yaml")
    ok = write(tmp_path, "services:\n  web:\n    ports: ['81:81']\n", "ok.yaml")
    with pytest.raises(StackError) as e:
        load_stacks([bad_base, ok], "s")
    assert (e.value.file, e.value.line, e.value.field) == (bad_base, 4, "services.web.ports[0]")
    with pytest.raises(StackError) as e:
        load_stacks([ok, bad_base], "s")
    assert (e.value.file, e.value.line, e.value.field) == (bad_base, 4, "services.web.ports[1]")
