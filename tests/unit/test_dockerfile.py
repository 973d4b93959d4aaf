"""The Dockerfile parser and .dockerignore rules (pure: no agent, no root); builds are in
tests/kernel/test_images_build.py."""

from __future__ import annotations

import pytest

from agent.images import dockerfile as df
from common.dockerignore import Matcher


def test_parse_continuations_comments_and_lines() -> None:
    d = df.parse("# syntax=docker/dockerfile:1\nFROM busybox AS base\n\nRUN echo a \\\n  # a comment\n  && echo b\n"
                 "copy --chown=1:2 a b\nFROM base\nCMD [\"sh\"]\n")
    assert [s.name for s in d.stages] == ["base", ""]
    run, copy = d.stages[0].instructions
    assert (run.keyword, run.line, run.args) == ("RUN", 4, "echo a   && echo b")
    assert (copy.keyword, copy.line, dict(copy.flags), copy.args) == ("COPY", 7, {"chown": "1:2"}, "a b")
    assert d.stages[1].instructions[0].json_args() == ["sh"]


def test_parse_escape_directive() -> None:
    d = df.parse("# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY c:\\dir\\ /x/\n")
    run, copy = d.stages[0].instructions
    assert run.args == "echo a   b"
    assert copy.args == "c:\\dir\\ /x/"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("FROM busybox\nFOO bar\n", 2, "unknown instruction: FOO"),
    ("FROM busybox\n\nONBUILD ONBUILD RUN true\n", 3, "ONBUILD isn't allowed as an ONBUILD trigger"),
    ("FROM busybox\nONBUILD FROM alpine\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM busybox\nONBUILD FOO x\n", 2, "unknown instruction: FOO"),
    ("FROM busybox\nHEALTHCHECK --every=5s CMD true\n", 2, "unknown flag: --every"),
    ("RUN true\n", 1, "RUN before FROM"),
    ("FROM busybox\nCOPY --frm=a b c\n", 2, "unknown flag: --frm"),
    ("FROM busybox\nRUN\n", 2, "RUN requires at least one argument"),
    ("FROM a AS x\nFROM b AS x\n", 2, "duplicate stage name"),
])
def test_parse_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(df.DockerfileError) as e:
        df.parse(text)
    assert e.value.line == line
    assert f"Dockerfile line {line}: " in str(e.value)
    assert message in str(e.value)


def test_words_and_expansion() -> None:
    env = {"A": "1", "B": "two words"}
    assert df.words("x=$A y=\"$B\" z='$A' w=\\$A ${C:-dflt} ${A:+set}", env) == [
        "x=1", "y=two words", "z=$A", "w=$A", "dflt", "set"]
    assert df.key_values("ENV", "K some value $A", env) == [("K", "some value 1")]
    assert df.key_values("ARG", "X Y=2", env) == [("X", "\0"), ("Y", "2")]


def test_dockerignore_rules() -> None:
    m = Matcher(["# comment", "*.log", "build/", "!build/keep.txt", "**/secret*", "/abs/x"])
    assert m.excluded("a.log") and not m.excluded("dir/a.log")
    assert m.excluded("build/out.o") and not m.excluded("build/keep.txt")
    assert m.may_include_below("build")
    assert m.excluded("deep/dir/secret.key") and m.excluded("secret")
    assert m.excluded("abs/x") and not m.excluded("src/main.c")
