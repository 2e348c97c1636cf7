"""Typed settings of ``eo-scaler``: every flag ``--some-flag`` also reads ``EO_SOME_FLAG`` (flag wins).

Errors name the flag and its environment variable and exit with a message, never a stack trace.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scaler.kpi_source import DEFAULT_MAX_ANSWER_BYTES, PrometheusAuth
from scaler.metadata import header_forbidden


@dataclass(frozen=True)
class ScalerSettings:
    listen_address: str = "0.0.0.0"
    port: int = 6000
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9103
    # Plaintext gRPC serving only grpc.health.v1: the kubelet's grpc probe cannot speak TLS.
    health_port: int | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    prometheus: PrometheusAuth = field(default_factory=PrometheusAuth)
    cache_ttl_s: float = 10.0
    cache_serve_stale_s: float = 30.0
    grace_s: float = 5.0
    max_workers: int = 64
    stream_interval_s: float = 15.0
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "--tls-cert-file and --tls-key-file (EO_TLS_CERT_FILE/EO_TLS_KEY_FILE) go together"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "--tls-client-ca-file (EO_TLS_CLIENT_CA_FILE) needs --tls-cert-file and --tls-key-file"
            )
        for name, path in (
            ("tls-cert-file", self.tls_cert_file),
            ("tls-key-file", self.tls_key_file),
            ("tls-client-ca-file", self.tls_client_ca_file),
            ("prometheus-bearer-token-file", self.prometheus.bearer_token_file),
            ("prometheus-basic-auth-password-file", self.prometheus.basic_auth_password_file),
            ("prometheus-ca-file", self.prometheus.ca_file),
        ):
            if path is not None and not path.is_file():
                env = "EO_" + name.upper().replace("-", "_")
                raise ValueError(f"--{name} ({env}): {path} is not a readable file")
        if not 0 < self.prometheus.timeout_s <= 2.5:
            raise ValueError(
                "--prometheus-timeout-seconds (EO_PROMETHEUS_TIMEOUT_SECONDS) must be in (0, 2.5]"
            )
        if self.health_port is not None and self.health_port != 0 and self.health_port == self.port:
            raise ValueError("--health-port (EO_HEALTH_PORT) must differ from --port (EO_PORT)")
        if self.cache_ttl_s <= 0:
            raise ValueError("--cache-ttl-seconds (EO_CACHE_TTL_SECONDS) must be > 0")
        for name in self.prometheus.allowed_metadata_headers:
            if header_forbidden(name):
                raise ValueError(
                    f"--allowed-metadata-headers (EO_ALLOWED_METADATA_HEADERS): {name} can never come from "
                    "metadata (credentials, cookies, framing and forwarding headers are refused)"
                )
        for name, value in self.prometheus.headers:
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(
                    f"--prometheus-headers (EO_PROMETHEUS_HEADERS): the value of {name} is not Latin-1"
                ) from None
        if not 64 * 1024 <= self.prometheus.max_answer_bytes <= 1024 * 1024 * 1024:
            raise ValueError(
                "--prometheus-max-answer-bytes (EO_PROMETHEUS_MAX_ANSWER_BYTES) must be in [64 KiB, 1 GiB]"
            )
        if self.prometheus.max_in_flight_per_server < 1:
            raise ValueError("--prometheus-max-in-flight (EO_PROMETHEUS_MAX_IN_FLIGHT) must be >= 1")


def _headers(raw: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected Name=value[,Name=value], got {item!r}")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(filter(None, (p.strip() for p in raw.split(","))))
    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
            raise argparse.ArgumentTypeError(f"expected header names separated by commas, got {name[:64]!r}")
    return names


def _bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


_FLAGS: list[tuple[str, type | object, object, str]] = [
    ("listen-address", str, "0.0.0.0", "gRPC listen address"),
    ("port", int, 6000, "gRPC port (0 picks a free one)"),
    ("metrics-address", str, "0.0.0.0", "address of the scaler's own /metrics"),
    ("metrics-port", int, 9103, "port of the scaler's own /metrics (0 picks a free one)"),
    (
        "health-port",
        int,
        None,
        "plaintext gRPC port serving only grpc.health.v1, for kubelet grpc probes when --port uses TLS "
        "(off when unset; 0 picks a free one)",
    ),
    ("tls-cert-file", Path, None, "PEM server certificate; enables TLS (set enableTLS in the trigger)"),
    ("tls-key-file", Path, None, "PEM private key of --tls-cert-file"),
    (
        "tls-client-ca-file",
        Path,
        None,
        "PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS: KEDA's tlsClientCert/tlsClientKey in a TriggerAuthentication)",
    ),
    (
        "prometheus-url",
        str,
        None,
        "default Prometheus (or Thanos/Mimir/Cortex/VictoriaMetrics) URL when a "
        "trigger has no serverAddress; credentials below are sent only to this URL",
    ),
    ("prometheus-bearer-token-file", Path, None, "file holding a bearer token (re-read on each query)"),
    ("prometheus-basic-auth-user", str, None, "basic auth user name"),
    ("prometheus-basic-auth-password-file", Path, None, "file holding the basic auth password"),
    ("prometheus-ca-file", Path, None, "PEM CA bundle to verify the Prometheus HTTPS certificate"),
    ("prometheus-headers", _headers, (), "extra headers Name=value[,Name=value] (e.g. X-Scope-OrgID=tenant)"),
    ("prometheus-timeout-seconds", float, 2.0, "per-query timeout, at most 2.5 (KEDA allows 3 s per poll)"),
    (
        "allow-any-server-address",
        _bool,
        False,
        "let triggers point the scaler at any serverAddress (default: only --prometheus-url; credentials "
        "and --prometheus-headers still go only to --prometheus-url)",
    ),
    (
        "restrict-server-address",
        _bool,
        True,
        "refuse triggers whose serverAddress is not --prometheus-url (the default; false is the same as "
        "--allow-any-server-address)",
    ),
    (
        "allowed-metadata-headers",
        _names,
        (),
        "header names a trigger's customHeaders may send, e.g. X-Scope-OrgID (default none; operator "
        "headers always win; Authorization, Cookie, Host, X-Forwarded-* and the like are always refused)",
    ),
    (
        "prometheus-max-answer-bytes",
        int,
        DEFAULT_MAX_ANSWER_BYTES,
        "largest Prometheus answer read, counted after decompression",
    ),
    (
        "prometheus-max-in-flight",
        int,
        8,
        "most queries in flight to one Prometheus server at a time (a slow one holds no more workers)",
    ),
    (
        "cache-ttl-seconds",
        float,
        10.0,
        "how long one Prometheus answer serves every ScaledObject of a workload",
    ),
    (
        "cache-serve-stale-seconds",
        float,
        30.0,
        "serve an expired answer while one refresh runs, up to this age",
    ),
    ("grace-seconds", float, 5.0, "on SIGTERM: NOT_SERVING, then stop with this grace"),
    ("max-workers", int, 64, "gRPC worker threads (each open stream holds one)"),
    ("stream-interval-seconds", float, 15.0, "StreamIsActive send interval"),
    ("log-level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ("log-format", str, "text", "text or json"),
]


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eo-scaler",
        description="Energy Orchestrator's KEDA external scaler: desired replicas that hold the latency SLO "
        "with the fewest, fullest replicas, under a power budget. Every flag also reads EO_<FLAG> "
        "(e.g. --prometheus-url / EO_PROMETHEUS_URL); the flag wins.",
    )
    for name, kind, default, help_text in _FLAGS:
        env_name = "EO_" + name.upper().replace("-", "_")
        raw = env.get(env_name)
        value = default
        if raw is not None:
            try:
                value = kind(raw)  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env_name}={raw!r}: {exc}")
        kwargs: dict[str, object] = {"type": kind, "default": value, "help": f"{help_text} [env {env_name}]"}
        if name == "log-format":
            kwargs["choices"] = ["text", "json"]
        parser.add_argument(f"--{name}", **kwargs)  # type: ignore[arg-type]
    return parser


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ScalerSettings:
    parser = build_parser(os.environ if env is None else env)
    ns = parser.parse_args(argv)
    try:
        auth = PrometheusAuth(
            url=ns.prometheus_url.rstrip("/") if ns.prometheus_url else None,
            bearer_token_file=ns.prometheus_bearer_token_file,
            basic_auth_user=ns.prometheus_basic_auth_user,
            basic_auth_password_file=ns.prometheus_basic_auth_password_file,
            ca_file=ns.prometheus_ca_file,
            headers=tuple(ns.prometheus_headers),
            timeout_s=ns.prometheus_timeout_seconds,
            restrict_server_address=ns.restrict_server_address and not ns.allow_any_server_address,
            allowed_metadata_headers=tuple(ns.allowed_metadata_headers),
            max_answer_bytes=ns.prometheus_max_answer_bytes,
            max_in_flight_per_server=ns.prometheus_max_in_flight,
        )
        return ScalerSettings(
            listen_address=ns.listen_address,
            port=ns.port,
            metrics_address=ns.metrics_address,
            metrics_port=ns.metrics_port,
            health_port=ns.health_port,
            tls_cert_file=ns.tls_cert_file,
            tls_key_file=ns.tls_key_file,
            tls_client_ca_file=ns.tls_client_ca_file,
            prometheus=auth,
            cache_ttl_s=ns.cache_ttl_seconds,
            cache_serve_stale_s=ns.cache_serve_stale_seconds,
            grace_s=ns.grace_seconds,
            max_workers=ns.max_workers,
            stream_interval_s=ns.stream_interval_seconds,
            log_level=ns.log_level.upper(),
            log_format=ns.log_format,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
