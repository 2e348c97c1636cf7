"""``eo-node-agent``'s settings: every flag is a variable too, the docs' table is the settings, bad values
refuse the start naming flag and variable, and the binary refuses to start without what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodeagent.main import build_parser, load_settings, main
from nodeagent.settings import StartupRefused

REPO = Path(__file__).resolve().parents[2]


def _flags() -> set[str]:
    return {a.option_strings[-1] for a in build_parser()._actions if a.option_strings[-1] != "--help"}


def test_docs_flag_table_is_the_settings() -> None:
    text = (REPO / "docs" / "powercap.md").read_text()
    section = text.split("### eo-node-agent flags", 1)[1].split("\n#", 1)[0]
    rows = "\n".join(line for line in section.splitlines() if line.startswith("| `--"))
    assert set(re.findall(r"`(--[a-z0-9-]+)`", rows)) == _flags()


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings([], {})
    assert (s.request_port, s.port, s.poll_interval_s, s.stale_after_s, s.min_change_interval_s) == (
        9104,
        9105,
        1.0,
        30.0,
        2.0,
    )
    assert s.namespaces == (), "no namespace may ask until the operator lists it"
    assert s.locks == s.state_dir / "locks"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EO_STALE_AFTER_SECONDS": "nan"}, "EO_STALE_AFTER_SECONDS"),
        ({"EO_REQUEST_PORT": "70000"}, "EO_REQUEST_PORT"),
        ({"EO_MIN_CHANGE_INTERVAL_SECONDS": "-1"}, "EO_MIN_CHANGE_INTERVAL_SECONDS"),
        ({"EO_FLOOR_WATTS": "0"}, "EO_FLOOR_WATTS"),
        ({"EO_STALE_AFTER_SECONDS": "1.5"}, "EO_STALE_AFTER_SECONDS"),  # under poll + timeout
    ],
)
def test_bad_values_refuse_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(StartupRefused, match=named):
        load_settings([], env)


def test_the_binary_refuses_to_start_without_a_node_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu-backend", "simulated", "--kube-api-url", "http://127.0.0.1:9"]) == 2
    assert "EO_NODE_NAME" in capsys.readouterr().err
