"""``eo-scaler``'s settings: every published flag, variable and default kept, one check per rule naming
the flag and the variable, and ``PrometheusAuth`` built from them with its own defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.settings import SettingsError, from_values
from scaler.kpi_source import PrometheusAuth
from scaler.settings import ScalerSettings, build_parser, load_settings, parse_settings

REPO = Path(__file__).resolve().parents[2]

# The flags eo-scaler published before its settings were declared once, with the defaults the old
# parser gave (read from it): names and defaults are an interface (manifests, docs, users' scripts).
PUBLISHED_DEFAULTS: dict[str, object] = {
    "--listen-address": "0.0.0.0",
    "--port": 6000,
    "--metrics-address": "0.0.0.0",
    "--metrics-port": 9103,
    "--health-port": None,
    "--tls-cert-file": None,
    "--tls-key-file": None,
    "--tls-client-ca-file": None,
    "--prometheus-url": None,
    "--prometheus-bearer-token-file": None,
    "--prometheus-basic-auth-user": None,
    "--prometheus-basic-auth-password-file": None,
    "--prometheus-ca-file": None,
    "--prometheus-headers": (),
    "--prometheus-timeout-seconds": 2.0,
    "--allow-any-server-address": False,
    "--restrict-server-address": True,
    "--allowed-metadata-headers": (),
    "--prometheus-max-answer-bytes": 8 * 1024 * 1024,
    "--prometheus-max-in-flight": 8,
    "--cache-ttl-seconds": 10.0,
    "--cache-serve-stale-seconds": 30.0,
    "--grace-seconds": 5.0,
    "--max-workers": 64,
    "--stream-interval-seconds": 15.0,
    "--log-level": "info",  # was "INFO": the level is now kept lower case, read in any case
    "--log-format": "text",
}


def _dests() -> dict[str, str]:
    """flag -> ScalerSettings field, from the parser the binary uses."""
    return {
        option: action.dest
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_published_flag_is_kept_with_its_default() -> None:
    dests = _dests()
    assert set(dests) == set(PUBLISHED_DEFAULTS)
    defaults = load_settings([], {})
    for flag, default in PUBLISHED_DEFAULTS.items():
        assert getattr(defaults, dests[flag]) == default, flag


@pytest.mark.parametrize("flag", list(PUBLISHED_DEFAULTS))
def test_every_flag_is_also_its_variable_and_help_names_it(flag: str) -> None:
    variable = "EO_" + flag.removeprefix("--").replace("-", "_").upper()
    assert variable in " ".join(build_parser().format_help().split())


def test_docs_flag_table_is_the_settings() -> None:
    text = (REPO / "docs" / "scaler.md").read_text()
    section = text.split("## The binary", 1)[1].split("\n## ", 1)[0]
    rows = "\n".join(line for line in section.splitlines() if line.startswith("| `--"))
    assert set(re.findall(r"`(--[a-z0-9-]+)", rows)) == set(_dests())
    assert set(re.findall(r"`(EO_[A-Z0-9_]+)`", rows)) == {
        "EO_" + flag.removeprefix("--").replace("-", "_").upper() for flag in _dests()
    }


def test_prometheus_auth_defaults_are_declared_once_on_it() -> None:
    assert load_settings([], {}).prometheus == PrometheusAuth()


def test_flags_win_over_variables_and_lists_parse() -> None:
    env = {
        "EO_PORT": "7000",
        "EO_PROMETHEUS_URL": "http://prom:9090/",
        "EO_PROMETHEUS_HEADERS": "X-Scope-OrgID=team-a, X-Team = blue",
        "EO_ALLOWED_METADATA_HEADERS": "X-Scope-OrgID,X-Team",
        "EO_LOG_LEVEL": "WARNING",
    }
    s = load_settings(["--port", "7001", "--prometheus-max-in-flight", "3"], env)
    assert (s.port, s.log_level) == (7001, "warning")
    auth = s.prometheus
    assert auth.url == "http://prom:9090"
    assert auth.headers == (("X-Scope-OrgID", "team-a"), ("X-Team", "blue"))
    assert auth.allowed_metadata_headers == ("X-Scope-OrgID", "X-Team")
    assert auth.max_in_flight_per_server == 3


@pytest.mark.parametrize(
    ("argv", "env", "restricted"),
    [
        ([], {}, True),
        (["--allow-any-server-address"], {}, False),
        (["--allow-any-server-address", "true"], {}, False),
        (["--restrict-server-address=false"], {}, False),
        ([], {"EO_RESTRICT_SERVER_ADDRESS": "0"}, False),
        ([], {"EO_ALLOW_ANY_SERVER_ADDRESS": "yes", "EO_RESTRICT_SERVER_ADDRESS": "true"}, False),
    ],
)
def test_server_address_restriction(argv: list[str], env: dict[str, str], restricted: bool) -> None:
    assert load_settings(argv, env).prometheus.restrict_server_address is restricted


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # The old parser read an empty value as false: a templated manifest with an unset value let
        # triggers point the scaler at any server. Now refused.
        ("EO_RESTRICT_SERVER_ADDRESS", ""),
        ("EO_RESTRICT_SERVER_ADDRESS", "ture"),
        # Accepted by the old checks (nan <= 0 is false): a TTL no age is ever past.
        ("EO_CACHE_TTL_SECONDS", "nan"),
        # Accepted by the old parser: a StreamIsActive loop without a pause, or one that never sends.
        ("EO_STREAM_INTERVAL_SECONDS", "0"),
        ("EO_STREAM_INTERVAL_SECONDS", "inf"),
        # Crashed the old start with a traceback (logging's setLevel, ThreadPoolExecutor).
        ("EO_LOG_LEVEL", "verbose"),
        ("EO_MAX_WORKERS", "0"),
        # The old parser let these reach bind() (exit 1, "cannot start") or the shutdown.
        ("EO_PORT", "70000"),
        ("EO_GRACE_SECONDS", "-1"),
        ("EO_CACHE_SERVE_STALE_SECONDS", "nan"),
        ("EO_PORT", "six"),
        ("EO_HEALTH_PORT", "-1"),
        ("EO_LOG_FORMAT", "xml"),
        ("EO_PROMETHEUS_TIMEOUT_SECONDS", "3"),
        ("EO_PROMETHEUS_TIMEOUT_SECONDS", "nan"),
        ("EO_PROMETHEUS_MAX_ANSWER_BYTES", "1024"),
        ("EO_PROMETHEUS_MAX_ANSWER_BYTES", str(2 * 1024**3)),
        ("EO_PROMETHEUS_MAX_IN_FLIGHT", "0"),
        ("EO_PROMETHEUS_HEADERS", "no-equals-sign"),
        ("EO_PROMETHEUS_HEADERS", "X-Team=caf\u00e9\u2603"),
        ("EO_ALLOWED_METADATA_HEADERS", "X-Scope-OrgID,Authorization"),
        ("EO_ALLOWED_METADATA_HEADERS", "X-Forwarded-User"),
        ("EO_ALLOWED_METADATA_HEADERS", "bad header"),
        ("EO_TLS_CERT_FILE", "/nonexistent.crt"),
        ("EO_PROMETHEUS_CA_FILE", "/nonexistent.pem"),
    ],
)
def test_a_bad_value_is_refused_naming_flag_and_variable(variable: str, value: str) -> None:
    flag = "--" + variable.removeprefix("EO_").lower().replace("_", "-")
    with pytest.raises(SettingsError) as info:
        load_settings([], {variable: value})
    assert f"{flag} / {variable}" in str(info.value)


def test_the_command_line_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings([], {"EO_CACHE_TTL_SECONDS": "nan"})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--cache-ttl-seconds / EO_CACHE_TTL_SECONDS" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EO_TLS_CERT_FILE": "cert"},
            "--tls-cert-file and --tls-key-file go together (EO_TLS_CERT_FILE, EO_TLS_KEY_FILE)",
        ),
        (
            {"EO_TLS_KEY_FILE": "key"},
            "--tls-cert-file and --tls-key-file go together (EO_TLS_CERT_FILE, EO_TLS_KEY_FILE)",
        ),
        (
            {"EO_TLS_CLIENT_CA_FILE": "ca"},
            "--tls-client-ca-file needs --tls-cert-file and --tls-key-file "
            "(EO_TLS_CLIENT_CA_FILE, EO_TLS_CERT_FILE, EO_TLS_KEY_FILE)",
        ),
        (
            {"EO_PORT": "6000", "EO_HEALTH_PORT": "6000"},
            "--health-port must differ from --port (EO_HEALTH_PORT, EO_PORT)",
        ),
    ],
)
def test_cross_field_checks_name_every_flag_and_variable(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    files = {name: str(tmp_path / value) for name, value in env.items() if name.endswith("_FILE")}
    for path in files.values():
        Path(path).write_text("")
    with pytest.raises(SettingsError) as info:
        load_settings([], {**env, **files})
    assert str(info.value) == message


def test_health_port_may_be_zero_or_unset_with_any_port(tmp_path: Path) -> None:
    assert load_settings([], {"EO_PORT": "0", "EO_HEALTH_PORT": "0"}).health_port == 0
    assert load_settings([], {"EO_HEALTH_PORT": ""}).health_port is None


def test_in_process_settings_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EO_PORT", "1234")
    assert from_values(ScalerSettings, {"metrics_port": 0}, environ={}).port == 6000


def test_in_process_callers_give_the_flat_prometheus_fields() -> None:
    auth = PrometheusAuth(
        url="http://prom:9090",
        headers=(("X-Scope-OrgID", "a"),),
        timeout_s=1.0,
        restrict_server_address=False,
        allowed_metadata_headers=("X-Team",),
        max_in_flight_per_server=2,
    )
    values = {
        "prometheus_url": "http://prom:9090",
        "prometheus_headers": (("X-Scope-OrgID", "a"),),
        "prometheus_timeout_s": 1.0,
        "restrict_server_address": False,
        "allowed_metadata_headers": ("X-Team",),
        "prometheus_max_in_flight": 2,
        "cache_ttl_s": 1.0,
    }
    settings = from_values(ScalerSettings, values, environ={})
    assert settings.prometheus == auth and settings.cache_ttl_s == 1.0
    with pytest.raises(SettingsError, match="X-Forwarded-For"):
        from_values(ScalerSettings, {"allowed_metadata_headers": ("X-Forwarded-For",)}, environ={})
    # One way in: a PrometheusAuth is what the settings give, not what they take.
    with pytest.raises(SettingsError, match="prometheus"):
        from_values(ScalerSettings, {"prometheus": auth}, environ={})
