"""The one configuration mechanism: flags, EO_* variables, --help and errors derived from one class."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import pytest
from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from common.settings import (
    BinarySettings,
    ExistingFile,
    Flag,
    OptionalText,
    Port,
    Seconds,
    SettingsError,
    from_values,
    load,
    parse_bool,
    setting,
)


class Demo(BinarySettings):
    port: Port = setting(9102, "TCP port to serve on")
    interval_s: Seconds = setting(5.0, "seconds between samples", flag="--interval-seconds")
    dry_run: Flag = setting(False, "compute, publish, set nothing")
    url: OptionalText = setting(None, "where to read from")
    token_file: ExistingFile = setting(None, "file holding the token")


def _load(argv: list[str], env: dict[str, str] | None = None) -> Demo:
    return load(Demo, argv, prog="demo", description="a demo binary", environ=env or {})


def test_defaults() -> None:
    s = _load([])
    assert (s.port, s.interval_s, s.dry_run, s.url, s.token_file) == (9102, 5.0, False, None, None)


def test_flag_wins_over_variable_which_wins_over_default() -> None:
    assert _load([], {"EO_PORT": "8000"}).port == 8000
    assert _load(["--port", "7000"], {"EO_PORT": "8000"}).port == 7000


def test_flag_name_of_its_own_names_the_variable_too() -> None:
    assert _load([], {"EO_INTERVAL_SECONDS": "2.5"}).interval_s == 2.5
    assert _load(["--interval-seconds", "1"]).interval_s == 1.0


@pytest.mark.parametrize(("argv", "expected"), [(["--dry-run"], True), (["--dry-run=false"], False)])
def test_boolean_flags(argv: list[str], expected: bool) -> None:
    assert _load(argv).dry_run is expected


@pytest.mark.parametrize("text", ["yes", "TRUE", "1", "on"])
def test_boolean_variables(text: str) -> None:
    assert _load([], {"EO_DRY_RUN": text}).dry_run is True


def test_bad_value_names_flag_and_variable_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as err:
        _load([], {"EO_INTERVAL_SECONDS": "nan"})
    assert "--interval-seconds / EO_INTERVAL_SECONDS" in str(err.value)
    with pytest.raises(SettingsError) as err:
        _load(["--port", "x" * 10_000])
    assert "--port / EO_PORT" in str(err.value)
    assert len(str(err.value)) < 300


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--token-file / EO_TOKEN_FILE"):
        _load(["--token-file", str(tmp_path / "absent")])
    present = tmp_path / "token"
    present.write_text("t")
    assert _load(["--token-file", str(present)]).token_file == present


def test_empty_text_is_none() -> None:
    assert _load([], {"EO_URL": ""}).url is None


def test_help_lists_every_flag_with_its_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _load(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, env in [("--port", "EO_PORT"), ("--interval-seconds", "EO_INTERVAL_SECONDS")]:
        assert flag in out
        assert env in out
    assert "default: 9102" in out


def test_settings_are_frozen() -> None:
    s = _load([])
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]


def test_parse_bool_refuses_other_words() -> None:
    with pytest.raises(ValueError):
        parse_bool("maybe")


class Prefixed(BinarySettings):
    model_config = SettingsConfigDict(env_prefix="EO_TOOL_")

    port: Port = setting(9102, "TCP port to serve on")
    verbose: Flag = setting(False, "say more", short="-v")


def _load_prefixed(argv: list[str], env: dict[str, str]) -> Prefixed:
    return load(Prefixed, argv, prog="tool", description="a prefixed binary", environ=env)


def test_a_class_names_its_own_variable_prefix() -> None:
    assert _load_prefixed([], {"EO_TOOL_PORT": "8000", "EO_PORT": "7000"}).port == 8000
    assert _load_prefixed([], {"EO_PORT": "7000"}).port == 9102
    assert _load([], {"EO_TOOL_PORT": "8000"}).port == 9102, "the default prefix stays EO_"
    with pytest.raises(SettingsError, match="--port / EO_TOOL_PORT"):
        _load_prefixed([], {"EO_TOOL_PORT": "x"})


def test_prefix_and_short_alias_show_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load_prefixed(["--help"], {})
    out = " ".join(capsys.readouterr().out.split())
    assert "EO_TOOL_PORT" in out and "EO_TOOL_VERBOSE" in out
    assert "-v [VERBOSE], --verbose [VERBOSE]" in out


@pytest.mark.parametrize("argv", [["-v"], ["--verbose"], ["-v", "true"]])
def test_short_alias_sets_the_same_field(argv: list[str]) -> None:
    assert _load_prefixed(argv, {}).verbose is True
    assert _load_prefixed([], {"EO_TOOL_VERBOSE": "1"}).verbose is True


def test_direct_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EO_PORT", "8000")
    assert Demo().port == 9102
    assert load(Demo, [], prog="demo", description="d").port == 8000


class Paired(BinarySettings):
    model_config = SettingsConfigDict(env_prefix="EO_PAIR_")

    cert_file: OptionalText = setting(None, "certificate")
    key_file: OptionalText = setting(None, "its key")
    interval_s: Seconds = setting(5.0, "seconds between polls", flag="--interval-seconds")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        self.require_together("cert_file", "key_file", ": set both or neither")
        return self


def test_settings_that_go_together_are_refused_alone_naming_both_flags_and_variables() -> None:
    for given in ({"cert_file": "c"}, {"key_file": "k"}):
        with pytest.raises(SettingsError) as err:
            from_values(Paired, given, environ={})
        assert str(err.value) == (
            "--cert-file and --key-file go together (EO_PAIR_CERT_FILE, EO_PAIR_KEY_FILE): set both or neither"
        )
    assert from_values(Paired, {"cert_file": "c", "key_file": "k"}, environ={}).key_file == "k"
    assert from_values(Paired, {}, environ={}).cert_file is None


def test_messages_name_a_setting_by_its_derived_flag_and_variable() -> None:
    assert Paired.flag_for("interval_s") == "--interval-seconds"
    assert Paired.flag_and_variable("interval_s") == "--interval-seconds / EO_PAIR_INTERVAL_SECONDS"
    assert Paired.variables_for("cert_file", "interval_s") == "(EO_PAIR_CERT_FILE, EO_PAIR_INTERVAL_SECONDS)"
