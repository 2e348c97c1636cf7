"""``eo-scaler``'s settings, each declared once: every flag ``--some-flag`` also reads ``EO_SOME_FLAG``.

``ScalerSettings`` is a ``common.settings.BinarySettings``: each field's unit (in its name), default,
validation, flag, ``EO_*`` variable and help text are declared here, and the command line, the
environment reading and ``--help`` are derived from them. A bad value refuses the start naming the flag
and the variable (exit status 2, never a traceback); checks that span fields (certificate with key, a
health port apart from the gRPC port) are the model validators below, once.

How to reach Prometheus is handed to the KPI source as one ``PrometheusAuth`` (``settings.prometheus``);
its defaults are declared on ``PrometheusAuth`` and taken from there, so an in-process source and the
binary behave alike. In-process callers (tests, the demo) give the flat ``prometheus_*`` fields, e.g.
``common.settings.from_values(ScalerSettings, {"prometheus_url": url}, environ={})``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from common.settings import (
    BinarySettings,
    ExistingFile,
    Flag,
    OptionalBaseUrl,
    OptionalText,
    Port,
    Seconds,
    SettingsError,
    load,
    setting,
)
from common.settings import build_parser as settings_parser
from scaler.kpi_source import PrometheusAuth
from scaler.metadata import header_forbidden

PROG = "eo-scaler"
DESCRIPTION = (
    "Energy Orchestrator's KEDA external scaler: desired replicas that hold the latency SLO with the "
    "fewest, fullest replicas, under a power budget."
)
EPILOG = (
    "Every flag --some-flag is also the variable EO_SOME_FLAG (e.g. --prometheus-url / EO_PROMETHEUS_URL); "
    "a flag wins over its variable."
)
# The scaler's share of KEDA's 3 s per poll: all of one poll's queries within this.
MAX_PROMETHEUS_TIMEOUT_S = 2.5
MIN_ANSWER_BYTES, MAX_ANSWER_BYTES = 64 * 1024, 1024 * 1024 * 1024


def _auth_default(name: str) -> Any:
    """``PrometheusAuth``'s default for ``name``: declared there once."""
    return next(f.default for f in dataclasses.fields(PrometheusAuth) if f.name == name)


def _split(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in text.split(","))))


def _items(value: object) -> object:
    """A comma-separated list (text from a flag or variable) into its items; a sequence passes."""
    return _split(value) if isinstance(value, str) else value


def _header_pairs(value: object) -> object:
    """``Name=value[,Name=value]`` into ``((name, value), ...)``; pairs pass as they are."""
    if not isinstance(value, str):
        return value
    pairs = []
    for item in _split(value):
        name, sep, header = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected Name=value[,Name=value], got {item[:40]!r}")
        pairs.append((name.strip(), header.strip()))
    return tuple(pairs)


def _latin1(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    for name, value in pairs:
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"the value of {name[:40]} is not Latin-1") from None
    return pairs


def _allowable_header_names(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not name.isascii() or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"expected header names separated by commas, got {name[:40]!r}")
        if header_forbidden(name):
            raise ValueError(
                f"{name[:40]} can never come from metadata (credentials, cookies, framing and forwarding "
                "headers are refused)"
            )
    return names


def _answer_bytes(value: int) -> int:
    if not MIN_ANSWER_BYTES <= value <= MAX_ANSWER_BYTES:
        raise ValueError("must be in [64 KiB, 1 GiB] (65536..1073741824)")
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


HeaderPairs = Annotated[tuple[tuple[str, str], ...], BeforeValidator(_header_pairs), AfterValidator(_latin1)]
HeaderNames = Annotated[tuple[str, ...], BeforeValidator(_items), AfterValidator(_allowable_header_names)]
OptionalPort = Annotated[Port | None, BeforeValidator(_empty_is_none)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)]


class ScalerSettings(BinarySettings):
    """Everything ``eo-scaler`` takes. Each flag ``--some-flag`` is also ``EO_SOME_FLAG``."""

    # -- serving ---------------------------------------------------------------------------------------
    listen_address: str = setting("0.0.0.0", "gRPC listen address")
    port: Port = setting(6000, "gRPC port (0 picks a free one)")
    metrics_address: str = setting("0.0.0.0", "address of the scaler's own /metrics and /healthz")
    metrics_port: Port = setting(9103, "port of the scaler's own /metrics and /healthz (0 picks a free one)")
    health_port: OptionalPort = setting(
        None,
        "plaintext gRPC port serving only grpc.health.v1, for kubelet grpc probes when --port uses TLS "
        "(off when unset; 0 picks a free one)",
    )
    tls_cert_file: ExistingFile = setting(
        None, "PEM server certificate; enables TLS (set enableTLS in the trigger)"
    )
    tls_key_file: ExistingFile = setting(None, "PEM private key of --tls-cert-file")
    tls_client_ca_file: ExistingFile = setting(
        None,
        "PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS: KEDA's tlsClientCert/tlsClientKey in a TriggerAuthentication)",
    )

    # -- Prometheus ------------------------------------------------------------------------------------
    prometheus_url: OptionalBaseUrl = setting(
        _auth_default("url"),
        "default Prometheus (or Thanos/Mimir/Cortex/VictoriaMetrics) URL when a trigger has no "
        "serverAddress; credentials below are sent only to this URL",
    )
    prometheus_bearer_token_file: ExistingFile = setting(
        _auth_default("bearer_token_file"), "file holding a bearer token (re-read on each query)"
    )
    prometheus_basic_auth_user: OptionalText = setting(
        _auth_default("basic_auth_user"), "basic auth user name"
    )
    prometheus_basic_auth_password_file: ExistingFile = setting(
        _auth_default("basic_auth_password_file"), "file holding the basic auth password"
    )
    prometheus_ca_file: ExistingFile = setting(
        _auth_default("ca_file"), "PEM CA bundle to verify the Prometheus HTTPS certificate"
    )
    prometheus_headers: HeaderPairs = setting(
        "", "extra headers Name=value[,Name=value] (e.g. X-Scope-OrgID=tenant); values Latin-1"
    )
    prometheus_timeout_s: float = setting(
        _auth_default("timeout_s"),
        f"deadline of all of one poll's queries, at most {MAX_PROMETHEUS_TIMEOUT_S} (KEDA allows 3 s per "
        "poll)",
        flag="--prometheus-timeout-seconds",
        gt=0,
        le=MAX_PROMETHEUS_TIMEOUT_S,
        allow_inf_nan=False,
    )
    allow_any_server_address: Flag = setting(
        False,
        "let triggers point the scaler at any serverAddress (default: only --prometheus-url; credentials "
        "and --prometheus-headers still go only to --prometheus-url)",
    )
    restrict_server_address: Flag = setting(
        _auth_default("restrict_server_address"),
        "refuse triggers whose serverAddress is not --prometheus-url (the default; false is the same as "
        "--allow-any-server-address)",
    )
    allowed_metadata_headers: HeaderNames = setting(
        "",
        "header names a trigger's customHeaders may send, e.g. X-Scope-OrgID (default none; operator "
        "headers always win; Authorization, Cookie, Host, X-Forwarded-* and the like are always refused)",
    )
    prometheus_max_answer_bytes: Annotated[int, AfterValidator(_answer_bytes)] = setting(
        _auth_default("max_answer_bytes"),
        "largest Prometheus answer read, counted after decompression, in [64 KiB, 1 GiB]",
    )
    prometheus_max_in_flight: int = setting(
        _auth_default("max_in_flight_per_server"),
        "most queries in flight to one Prometheus server at a time (a slow one holds no more workers)",
        ge=1,
    )

    # -- cache, streams, shutdown ----------------------------------------------------------------------
    cache_ttl_s: Seconds = setting(
        10.0,
        "how long one Prometheus answer serves every ScaledObject of a workload",
        flag="--cache-ttl-seconds",
    )
    cache_serve_stale_s: NonNegative = setting(
        30.0,
        "serve an expired answer while one refresh runs, up to this age",
        flag="--cache-serve-stale-seconds",
    )
    grace_s: NonNegative = setting(
        5.0, "on SIGTERM: NOT_SERVING, then stop with this grace", flag="--grace-seconds"
    )
    max_workers: int = setting(64, "gRPC worker threads (each open stream holds one)", ge=1)
    stream_interval_s: Seconds = setting(
        15.0, "StreamIsActive send interval", flag="--stream-interval-seconds"
    )

    # -- logging ---------------------------------------------------------------------------------------
    log_level: LogLevel = setting("info", "debug, info, warning, error or critical (any case)")
    log_format: Literal["text", "json"] = setting("text", "log line format: text or json")

    @model_validator(mode="after")
    def _tls_material_complete(self) -> Self:
        self.require_together("tls_cert_file", "tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            ca, cert, key = "tls_client_ca_file", "tls_cert_file", "tls_key_file"
            raise ValueError(
                f"{self.flag_for(ca)} needs {self.flag_for(cert)} and {self.flag_for(key)} "
                f"{self.variables_for(ca, cert, key)}"
            )
        return self

    @model_validator(mode="after")
    def _health_port_apart(self) -> Self:
        if self.health_port not in (None, 0) and self.health_port == self.port:
            raise ValueError(
                f"{self.flag_for('health_port')} must differ from {self.flag_for('port')} "
                f"{self.variables_for('health_port', 'port')}"
            )
        return self

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def prometheus(self) -> PrometheusAuth:
        """How the KPI source reaches Prometheus; ``--allow-any-server-address`` lifts the restriction."""
        values = {name: getattr(self, field) for name, field in _AUTH_FIELDS.items()}
        values["restrict_server_address"] = self.restrict_server_address and not self.allow_any_server_address
        return PrometheusAuth(**values)


# PrometheusAuth field -> the ScalerSettings field that declares its flag (``prometheus`` builds one
# from them).
_AUTH_FIELDS = {
    "url": "prometheus_url",
    "bearer_token_file": "prometheus_bearer_token_file",
    "basic_auth_user": "prometheus_basic_auth_user",
    "basic_auth_password_file": "prometheus_basic_auth_password_file",
    "ca_file": "prometheus_ca_file",
    "headers": "prometheus_headers",
    "timeout_s": "prometheus_timeout_s",
    "restrict_server_address": "restrict_server_address",
    "allowed_metadata_headers": "allowed_metadata_headers",
    "max_answer_bytes": "prometheus_max_answer_bytes",
    "max_in_flight_per_server": "prometheus_max_in_flight",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from ``ScalerSettings`` (``--help`` lists every flag and its variable)."""
    return settings_parser(ScalerSettings, PROG, DESCRIPTION, EPILOG)


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> ScalerSettings:
    """Settings from ``argv`` over ``environ`` (default: the process's) over the defaults; a bad value
    raises ``SettingsError`` naming the flag and its variable."""
    return load(ScalerSettings, argv, prog=PROG, description=DESCRIPTION, epilog=EPILOG, environ=environ)


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ScalerSettings:
    """``load_settings`` for the command line: a bad value is printed and exits with status 2."""
    try:
        return load_settings(argv, env)
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
