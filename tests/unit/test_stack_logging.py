"""A stack service's `logging: {driver, options}`: read, checked at its line, carried to each task's
container config (the node merges its own default options in and checks again)."""

from __future__ import annotations

import pytest

from deploy.stack import StackError, parse_stack
from scheduler.dispatch import container_config
from scheduler.model import Task

STACK = """\
services:
  web:
    image: busybox
    logging:
      driver: json-file
      options:
        max-size: 10m
        max-file: 3
  quiet:
    image: busybox
    logging: {driver: none}
  plain:
    image: busybox
"""


def test_logging_reaches_the_container_config() -> None:
    stack = parse_stack(STACK, "s")
    web = stack.service("web")
    assert (web.log_driver, web.log_options) == ("json-file", (("max-file", "3"), ("max-size", "10m")))
    cfg = container_config(Task(id="t1", service=web.name, slot=1, spec_version=web.digest), web, "s")
    assert cfg.log_config.type == "json-file" and dict(cfg.log_config.config) == {"max-size": "10m", "max-file": "3"}
    quiet = stack.service("quiet")
    assert container_config(Task(id="t2", service=quiet.name, slot=1, spec_version=quiet.digest), quiet,
                            "s").log_config.type == "none"
    plain = stack.service("plain")
    assert not container_config(Task(id="t3", service=plain.name, slot=1, spec_version=plain.digest), plain,
                                "s").HasField("log_config")


@pytest.mark.parametrize(("body", "error", "line"), [
    ("logging: {driver: syslog}", 'logging driver "syslog" is not supported', 4),
    ("logging: {driver: json-file, options: {max-size: big}}", "max-size=big: invalid size", 4),
    ("logging: {options: {tag: '{{.Nope}}'}}", "log opt tag={{.Nope}}: no field Nope", 4),
    ("logging: {options: {mode: non-blocking}}", "unknown log opt 'mode' for json-file log driver", 4),
    ("logging: {driver: none, options: {max-size: 1m}}", "unknown log opt 'max-size' for none log driver", 4),
    ("logging: {driver: json-file, colour: red}", "colour", 4),
    ("logging: {options: {max-size: [1]}}", "a log option's value is a string", 4),
])
def test_bad_logging_is_refused_at_its_line(body: str, error: str, line: int) -> None:
    with pytest.raises(StackError) as e:
        parse_stack(f"services:\n  web:\n    image: busybox\n    {body}\n", "s", file="s.yaml")
    assert error in str(e.value) and e.value.line == line, str(e.value)


def test_max_file_alone_waits_for_the_nodes_default() -> None:
    svc = parse_stack("services:\n  web:\n    image: busybox\n    logging: {options: {max-file: '2'}}\n", "s") \
        .service("web")
    assert svc.log_options == (("max-file", "2"),)
