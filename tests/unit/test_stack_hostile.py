"""Stack files built to hurt, and Compose's reading of the tricky parts: each answered in bounded
time with `file:line: field: problem`, never a hang, a RecursionError or a traceback."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from deploy.compose import dotenv
from deploy.compose.interpolate import InterpolationError, interpolate
from deploy.stack import StackError, load_stack, parse_stack
from scheduler.model import PortSpec

WEB = "services:\n  web:\n    image: nginx\n"


def fails(text: str, *, environ: dict[str, str] | None = None) -> StackError:
    with pytest.raises(StackError) as e:
        parse_stack(text, "s", environ=environ)
    return e.value


def laughs(levels: int = 9, width: int = 9) -> str:
    out = WEB + "x-l0: &l0 [" + ", ".join(['"lol"'] * width) + "]\n"
    for i in range(1, levels + 1):
        out += f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n"
    return out


def test_billion_laughs_is_refused_at_once() -> None:
    t = time.monotonic()
    err = fails(laughs())
    # The quadratic parser took 44 s (over 300 s under load); linear takes 0.6 s. The bound only has to
    # tell the two apart, not time the parser (the bench does).
    assert time.monotonic() - t < 20.0
    assert "once aliases are expanded" in err.problem and err.line > 4


def test_billion_laughs_through_merge_keys() -> None:
    text = WEB + "x-m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}\n"
    for i in range(1, 10):
        text += f"x-m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}\n"
    t = time.monotonic()
    err = fails(text)
    # The quadratic parser took 44 s (over 300 s under load); linear takes 0.6 s. The bound only has to
    # tell the two apart, not time the parser (the bench does).
    assert time.monotonic() - t < 20.0
    assert "once aliases are expanded" in err.problem


def test_many_aliases_within_the_bound_are_fine() -> None:
    stack = parse_stack(laughs(levels=3, width=9), "s")  # 9**4 = 6561 values
    assert stack.services[0].image == "nginx"


@pytest.mark.parametrize("deep", [
    "x-deep: " + "[" * 5000 + "]" * 5000 + "\n",
    "x-deep: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    "x-deep:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(300)),
], ids=["flow list", "flow map", "block map"])
def test_deep_nesting_is_a_clear_error(deep: str) -> None:
    err = fails(WEB + deep)
    assert err.line >= 4
    assert "nested more than 64 levels deep" in err.problem


def test_deep_through_aliases_is_a_clear_error() -> None:
    text = WEB + "x-0: &a0 [1]\n" + "".join(f"x-{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100))
    assert "levels deep once aliases are expanded" in fails(text).problem


def test_alias_cycle() -> None:
    err = fails("x-loop: &a [*a]\n" + WEB)
    assert err.line == 1 and "a cycle" in err.problem


def test_huge_integer_literal() -> None:
    err = fails(WEB + "    deploy:\n      replicas: " + "9" * 5000 + "\n")
    assert err.line == 5 and "too long" in err.problem


def test_port_range_parses_in_linear_time() -> None:
    t = time.monotonic()
    stack = parse_stack(WEB + '    ports: ["1-65535:1-65535"]\n', "s")
    # The quadratic parser took 44 s (over 300 s under load); linear takes 0.6 s. The bound only has to
    # tell the two apart, not time the parser (the bench does).
    assert time.monotonic() - t < 20.0
    ports = stack.services[0].ports
    assert len(ports) == 65535 and ports[-1] == PortSpec(65535, 65535, "tcp", "ingress")
    err = fails(WEB + '    ports: ["1-65535:1-65535", "1000:1000/tcp"]\n')
    assert "host port 1000/tcp published twice" in err.problem


def resources(value: str, key: str = "cpus") -> str:
    return WEB + f"    deploy:\n      resources:\n        limits:\n          {key}: {value}\n"


@pytest.mark.parametrize(("value", "fragment"), [
    ("inf", "finite"), (".inf", "finite"), ("nan", "finite"), (".nan", "finite"), ("-.inf", "finite"),
    ("1e300", "more than the 8192 CPUs"), ("'1e300'", "more than the 8192 CPUs"), ("8193", "more than the 8192"),
    ("0.0000000001", "less than one billionth"), ("0", "more than 0"),
])
def test_bad_cpus(value: str, fragment: str) -> None:
    err = fails(resources(value))
    assert (err.line, err.field) == (7, "services.web.deploy.resources.limits.cpus")
    assert fragment in err.problem


@pytest.mark.parametrize("value", ["100000000000000000000000000000000", "1.0e+32", "'1e32'", "99999999999g"])
def test_memory_beyond_any_host(value: str) -> None:
    err = fails(resources(value, "memory"))
    assert (err.line, err.field) == (7, "services.web.deploy.resources.limits.memory")
    assert "PiB" in err.problem or "invalid size" in err.problem


def test_replicas_bound() -> None:
    err = fails(WEB + "    deploy:\n      replicas: 1000000000\n")
    assert (err.line, err.field) == (5, "services.web.deploy.replicas")
    assert "at most 100,000" in err.problem
    assert parse_stack(WEB + "    deploy:\n      replicas: 100000\n", "s").services[0].replicas == 100000


def test_other_counts_and_durations_are_bounded() -> None:
    err = fails(WEB + "    deploy:\n      update_config:\n        parallelism: 99999999999\n")
    assert err.field == "services.web.deploy.update_config.parallelism" and "at most" in err.problem
    err = fails(WEB + "    deploy:\n      update_config:\n        delay: " + "9" * 400 + "h\n")
    assert err.field == "services.web.deploy.update_config.delay" and "longer than" in err.problem
    err = fails(WEB + "    deploy:\n      update_config:\n        max_failure_ratio: .nan\n")
    assert "finite" in err.problem


@pytest.mark.parametrize("version", ['"3"', '"3.8"', "3.8", "'3.0'"])
def test_versions_accepted(version: str) -> None:
    assert parse_stack(f"version: {version}\n" + WEB, "s").services


@pytest.mark.parametrize("version", ['"99"', '"2.4"', "4", '"3.10.1"', "[3]", "true"])
def test_versions_refused(version: str) -> None:
    err = fails(f"version: {version}\n" + WEB)
    assert (err.line, err.field) == (1, "version")


# -- Compose's YAML ------------------------------------------------------------------------------

def test_unquoted_port_pairs_are_strings_not_base_60() -> None:
    stack = parse_stack(WEB + "    ports:\n      - 22:22\n      - 80\n      - 1:30\n", "s")
    assert stack.services[0].ports == (PortSpec(22, 22, "tcp", "ingress"), PortSpec(80, None, "tcp", "ingress"),
                                       PortSpec(30, 1, "tcp", "ingress"))


def test_dates_and_times_stay_strings() -> None:
    stack = parse_stack(WEB + "    environment:\n      DAY: 2024-01-01\n      AT: 12:30:00\n", "s")
    assert stack.services[0].env == (("AT", "12:30:00"), ("DAY", "2024-01-01"))


def test_merge_keys_with_overrides() -> None:
    stack = parse_stack(textwrap.dedent("""\
        x-base: &base
          image: nginx
          environment: {A: "1"}
          deploy: {replicas: 2}
        x-more: &more
          image: ignored-because-base-comes-first
          command: ["echo", "hi"]
        services:
          web:
            <<: [*base, *more]
            image: httpd
          api:
            <<: *base
            deploy: {replicas: 5}
        """), "s")
    web, api = stack.service("web"), stack.service("api")
    assert (web.image, web.command, web.replicas, web.env) == ("httpd", ("echo", "hi"), 2, (("A", "1"),))
    assert (api.image, api.replicas) == ("nginx", 5)


def test_merge_key_errors() -> None:
    err = fails("x-a: &a [1, 2]\nservices:\n  web:\n    <<: *a\n    image: nginx\n")
    assert err.line == 1 and "merge key" in err.problem
    err = fails("x-a: &a {image: x}\nservices:\n  web:\n    <<: *a\n    image: nginx\n    image: httpd\n")
    assert err.line == 6 and "duplicate key 'image' (first on line 5)" in err.problem


# -- interpolation ---------------------------------------------------------------------------------

def expand(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    warned: list[str] = []
    return interpolate(text, env, warned.append), warned


@pytest.mark.parametrize(("text", "env", "want"), [
    ("${X}", {"X": "1"}, "1"), ("$X", {"X": "1"}, "1"), ("a${X}b$X.c", {"X": "1"}, "a1b1.c"),
    ("${X:-d}", {}, "d"), ("${X:-d}", {"X": ""}, "d"), ("${X-d}", {"X": ""}, ""), ("${X-d}", {}, "d"),
    ("${X:+alt}", {"X": "1"}, "alt"), ("${X:+alt}", {"X": ""}, ""), ("${X+alt}", {"X": ""}, "alt"),
    ("$$X $${X}", {"X": "1"}, "$X ${X}"), ("${X:-${Y:-z}}", {}, "z"), ("${X:-${Y}}", {"Y": "y"}, "y"),
    ("${X:-a}}", {}, "a}"), ("${X:?never}", {"X": "set"}, "set"), ("${X:-${Y:?unused}}", {"X": "1"}, "1"),
    ("no dollars", {}, "no dollars"),
])
def test_interpolation_table(text: str, env: dict[str, str], want: str) -> None:
    assert expand(text, env)[0] == want


def test_unset_variable_warns_and_is_blank() -> None:
    assert expand("x${NOPE}y$NOPE", {}) == ("xy", ["NOPE", "NOPE"])


@pytest.mark.parametrize(("text", "fragment"), [
    ("${X:?give X}", "required variable X is missing a value: give X"), ("${X?}", "required variable X"),
    ("$ x", "invalid interpolation format"), ("${", "invalid interpolation format"),
    ("${X", "invalid interpolation format"), ("${1X}", "invalid interpolation format"),
    ("${X:=d}", "invalid interpolation format"), ("price: 5$", "invalid interpolation format"),
    ("${A:-" * 20 + "}" * 20, "nested"),
])
def test_interpolation_errors(text: str, fragment: str) -> None:
    with pytest.raises(InterpolationError, match=fragment):
        expand(text, {})


def test_interpolation_in_a_stack_names_file_line_field() -> None:
    err = fails(WEB + "    environment:\n      - A=ok\n      - B=${MISSING:?set MISSING}\n")
    assert (err.line, err.field) == (6, "services.web.environment[1]")
    assert "required variable MISSING is missing a value: set MISSING" in err.problem
    stack = parse_stack(WEB.replace("nginx", "nginx:${TAG}") + "    environment: [A=$UNSET, B=$UNSET]\n", "s",
                        environ={})
    assert stack.services[0].image == "nginx:"
    assert len(stack.warnings) == 2
    assert stack.warnings[0] == ('<stack>:3: services.web.image: the "TAG" variable is not set. '
                                 "Defaulting to a blank string.")


def test_interpolation_runs_once_through_shared_anchors() -> None:
    stack = parse_stack("x-env: &env {A: $$HOME}\nservices:\n  web:\n    image: nginx\n    environment: *env\n"
                        "  api:\n    image: nginx\n    environment: *env\n", "s", environ={"HOME": "/root"})
    assert stack.service("web").env == stack.service("api").env == (("A", "$HOME"),)


# -- .env beside the stack file --------------------------------------------------------------------

def test_dotenv_beside_the_stack_file_and_the_shell_over_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(textwrap.dedent("""\
        # comment
        TAG=1.0
        export REG=registry.local
        QUOTED="a b # not a comment\\n"
        SINGLE='${NOT} $$ expanded'
        UNQUOTED=plain value   # a comment
        REF=${REG}/x
        EMPTY=
        """))
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text("services:\n  web:\n    image: ${REG}/web:${TAG}\n")
    env = dotenv.project_environment(str(stack_file), {"TAG": "2.0"})
    assert env["TAG"] == "2.0" and env["REG"] == "registry.local"
    assert env["QUOTED"] == "a b # not a comment\n" and env["SINGLE"] == "${NOT} $$ expanded"
    assert env["UNQUOTED"] == "plain value" and env["REF"] == "registry.local/x" and env["EMPTY"] == ""
    assert load_stack(str(stack_file), "s", environ=env).services[0].image == "registry.local/web:2.0"
    assert dotenv.project_environment(str(tmp_path / "sub" / "x.yaml"), {"A": "1"}) == {"A": "1"}


@pytest.mark.parametrize(("line", "fragment"), [
    ("JUST_A_NAME", "expected NAME=value"), ("1BAD=x", "invalid variable name"),
    ("Q='open", "single quote is not closed"), ('Q="open', "double quote is not closed"),
    ("Q='a' b", "after the closing quote"), ("V=${X:?needed}", "required variable X"),
])
def test_dotenv_errors_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    (tmp_path / ".env").write_text(f"OK=1\n{line}\n")
    with pytest.raises(dotenv.DotEnvError) as e:
        dotenv.project_environment(str(tmp_path / "stack.yaml"), {})
    assert e.value.line == 2 and str(e.value).startswith(f"{tmp_path / '.env'}:2: ")
    assert fragment in str(e.value)


@pytest.mark.parametrize("loader", ["PyLoader", "Loader"])
def test_pure_python_and_libyaml_loaders_agree(loader: str) -> None:
    from deploy.compose import yamlload

    cls = getattr(yamlload, loader)
    doc = yamlload.load("x-b: &b {image: a, n: 1}\nweb:\n  <<: *b\n  image: b\n  ports: [22:22, 80]\n  d: 2024-01-01\n",
                        cls)
    assert doc == {"x-b": {"image": "a", "n": 1}, "web": {"image": "b", "n": 1, "ports": ["22:22", 80],
                                                          "d": "2024-01-01"}}
    assert doc["web"].lines == {"image": 4, "n": 1, "ports": 5, "d": 6}
    for text, fragment in ((laughs(), "once aliases are expanded"), ("a: " + "[" * 3000 + "]" * 3000, "levels deep"),
                           ("a: &x [*x]", "a cycle"), ("a: {b: 1\n", "not valid YAML"), ("a: 1\na: 2\n", "duplicate")):
        with pytest.raises(yamlload.YAMLError, match=fragment):
            yamlload.load(text, cls)
