"""`--format` takes json, the one format the list commands print; a Go template (`{{.Names}}`) is
refused with click's message naming the value, instead of the table printed as if nothing was said."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from deploy import options
from deploy.cli import main


@pytest.mark.parametrize("argv", [["ps"], ["images"], ["image", "ls"], ["stats", "--no-stream"],
                                  ["volume", "ls"], ["network", "ls"], ["system", "df"]])
def test_a_go_template_is_refused_by_name(argv: list[str]) -> None:
    r = CliRunner().invoke(main, [*argv, "--format", "{{.Names}}"])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--format': '{{.Names}}' is not 'json'" in r.output


def test_the_fast_parser_hands_a_template_to_click() -> None:
    """`ps`'s own parser (the CLI's fast path) does not take it either: click then says why."""
    with pytest.raises(options.Unsupported):
        options.parse(options.PS, ["--format", "{{.Names}}"])
    assert options.parse(options.PS, ["--format", "json"])[0]["fmt"] == "json"
    assert options.parse(options.PS, [])[0]["fmt"] is None
