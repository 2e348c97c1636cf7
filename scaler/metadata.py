"""Trigger metadata: KEDA's ``scalerMetadata`` strings in, a frozen typed ``TriggerConfig`` out.

Pure code. Every problem raises ``MetadataError`` (a ``ValueError``) whose ``key`` names the metadata
key at fault; the gRPC service maps it to ``INVALID_ARGUMENT``. Unknown keys are refused too, so a
typo (``latencySLOSeconds``) fails loudly instead of silently falling back to a default. KEDA's own
keys (``scalerAddress``, ``enableTLS``, ...) are accepted and ignored, and ``<key>FromEnv`` is read as
``<key>`` because KEDA resolves those from the target's environment before calling the scaler.
docs/scaler.md documents every key.

Metadata is input from every ScaledObject author, so it is bounded before anything else looks at it
(``MAX_METADATA_KEYS`` keys, ``MAX_KEY_CHARS`` per key, ``MAX_VALUE_BYTES`` per value,
``MAX_METADATA_BYTES`` in all) and error messages echo at most ``MAX_ECHO_CHARS`` of a bad value: a long
value is an ``INVALID_ARGUMENT`` with a short message, never a message larger than gRPC's trailers allow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from scaler.policy import DEFAULT_SCALE_DOWN_SHARE, DEFAULT_TARGET_UTILIZATION, PolicyConfig

# Kubernetes names: namespaces are DNS-1123 labels, workloads (Deployment, StatefulSet...) subdomains.
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_WORKLOAD_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# RFC 9110 header field name token.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")

KEDA_KEYS = frozenset(
    {"scalerAddress", "enableTLS", "unsafeSsl", "tlsCertFile", "caCert", "tlsClientCert", "tlsClientKey"}
)
# Limits on what one trigger may send (docs/scaler.md, "Limits").
MAX_METADATA_KEYS = 64
MAX_KEY_CHARS = 128
MAX_VALUE_BYTES = 4096
MAX_METADATA_BYTES = 16 * 1024
MAX_QUERY_CHARS = 4000
MAX_CUSTOM_HEADERS = 16
MAX_ECHO_CHARS = 64
# Headers no trigger may set, even where the operator allows metadata headers: credentials and cookies
# ride only on the operator's own configuration, and framing/routing headers would let a trigger change
# what the request is or where a proxy believes it comes from.
FORBIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "te",
        "trailer",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "expect",
        "accept-encoding",
        "forwarded",
        "via",
        "x-real-ip",
    }
)
FORBIDDEN_HEADER_PREFIXES = ("x-forwarded-", "proxy-")
MAX_QUERY_TIMEOUT_S = 2.5  # KEDA's HPA path gives GetMetricSpec + GetMetrics + IsActive 3 s together.
# TTFT and ITL held at P90 by default, as llm-d's SLO-aware autoscaling recipe does (P90 beat the mean);
# the ITL histogram counts tokens, so a high token quantile over-states the per-request tail.
DEFAULT_LLM_QUANTILE = 0.9


class Mode(StrEnum):
    ENFORCE = "enforce"
    ADVISORY = "advisory"


def header_forbidden(name: str) -> bool:
    """True for a header no trigger may set (``FORBIDDEN_HEADERS``, ``X-Forwarded-*``, ``Proxy-*``)."""
    lower = name.strip().lower()
    return lower in FORBIDDEN_HEADERS or lower.startswith(FORBIDDEN_HEADER_PREFIXES)


def echo(value: str) -> str:
    """``value`` quoted for an error message, at most ``MAX_ECHO_CHARS`` characters of it."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return f"{value[:MAX_ECHO_CHARS]!r}... ({len(value)} characters)"


class MetadataError(ValueError):
    """Bad trigger metadata; ``key`` is the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"metadata key {key!r}: {message}")
        self.key = key


@dataclass(frozen=True)
class TriggerConfig:
    """One ScaledObject trigger, validated. Durations in seconds, power in watts, rates per second."""

    namespace: str
    workload: str
    latency_slo_s: float | None = None
    server_address: str | None = None
    latency_quantile: float = 0.95
    ttft_slo_s: float | None = None
    ttft_quantile: float = DEFAULT_LLM_QUANTILE
    itl_slo_s: float | None = None
    itl_quantile: float = DEFAULT_LLM_QUANTILE
    latency_query: str | None = None
    activation_query: str | None = None
    target_joules_per_request: float | None = None
    power_budget_watts: float | None = None
    replica_power_watts: float | None = None
    replica_capacity_rps: float | None = None
    mode: Mode = Mode.ENFORCE
    idle_before_zero_s: float = 300.0
    activation_rps: float = 0.05
    staleness_s: float = 120.0
    min_replicas: int = 0
    max_replicas: int = 100
    target_utilization: float = DEFAULT_TARGET_UTILIZATION
    scale_down_utilization: float = DEFAULT_TARGET_UTILIZATION * DEFAULT_SCALE_DOWN_SHARE
    stabilization_window_s: float = 300.0
    breach_settle_s: float = 120.0
    capacity_lookback_s: float = 3600.0
    custom_headers: tuple[tuple[str, str], ...] = ()
    query_timeout_s: float | None = None
    cold_start_s: float = 60.0
    season_s: float | None = 86400.0
    kv_saturation_ratio: float = 0.9
    breach_significance: float = 0.05
    capacity_inputs: str = "raw"
    """Where the learned capacity reads its histogram rates: ``raw`` (the pods' series) or
    ``recorded`` (the ``…_bucket:rate1m_unfiltered`` rules of recording_rules/, installed with the
    PrometheusRule: about half the Prometheus CPU of that subquery; no capacity without them)."""
    learn_capacity: bool = True
    """Learn the per-replica capacity from what replicas served while every SLO held: the capacity
    without ``replicaCapacityRps``, a raise above it with. False needs ``replicaCapacityRps``."""

    def slos(self) -> list[tuple[str, float, float]]:
        """``(kind, SLO seconds, quantile)`` of every SLO given: ``ttft``, ``itl``, ``e2e``."""
        given = [
            ("ttft", self.ttft_slo_s, self.ttft_quantile),
            ("itl", self.itl_slo_s, self.itl_quantile),
            ("e2e", self.latency_slo_s, self.latency_quantile),
        ]
        return [(kind, slo, q) for kind, slo, q in given if slo is not None]

    @property
    def metric_name(self) -> str:
        """Name of the one metric this trigger reports (KEDA prefixes it with ``s<index>-``)."""
        return f"eo-desired-replicas-{self.workload}"[:200]

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            latency_slo_s=self.latency_slo_s,
            ttft_slo_s=self.ttft_slo_s,
            itl_slo_s=self.itl_slo_s,
            target_utilization=self.target_utilization,
            scale_down_utilization=self.scale_down_utilization,
            replica_capacity_rps=self.replica_capacity_rps,
            power_budget_watts=self.power_budget_watts,
            replica_power_watts=self.replica_power_watts,
            target_joules_per_request=self.target_joules_per_request,
            idle_before_zero_s=self.idle_before_zero_s,
            activation_rps=self.activation_rps,
            kv_saturation_ratio=self.kv_saturation_ratio,
            breach_significance=self.breach_significance,
            ttft_quantile=self.ttft_quantile,
            itl_quantile=self.itl_quantile,
            latency_quantile=self.latency_quantile,
        )


_FIELDS: dict[str, str] = {
    "serverAddress": "server_address",
    "namespace": "namespace",
    "workload": "workload",
    "latencySloSeconds": "latency_slo_s",
    "latencyQuantile": "latency_quantile",
    "ttftSloSeconds": "ttft_slo_s",
    "ttftQuantile": "ttft_quantile",
    "itlSloSeconds": "itl_slo_s",
    "itlQuantile": "itl_quantile",
    "latencyQuery": "latency_query",
    "activationQuery": "activation_query",
    "targetJoulesPerRequest": "target_joules_per_request",
    "powerBudgetWatts": "power_budget_watts",
    "replicaPowerWatts": "replica_power_watts",
    "replicaCapacityRps": "replica_capacity_rps",
    "mode": "mode",
    "idleBeforeZeroSeconds": "idle_before_zero_s",
    "activationRps": "activation_rps",
    "stalenessSeconds": "staleness_s",
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "targetUtilization": "target_utilization",
    "headroom": "target_utilization",
    "scaleDownUtilization": "scale_down_utilization",
    "stabilizationWindowSeconds": "stabilization_window_s",
    "breachSettleSeconds": "breach_settle_s",
    "capacityLookbackSeconds": "capacity_lookback_s",
    "customHeaders": "custom_headers",
    "queryTimeoutSeconds": "query_timeout_s",
    "coldStartSeconds": "cold_start_s",
    "seasonSeconds": "season_s",
    "kvSaturationRatio": "kv_saturation_ratio",
    "breachSignificance": "breach_significance",
    "learnCapacity": "learn_capacity",
    "capacityInputs": "capacity_inputs",
}
# The SLO keys with their quantile keys: at least one SLO is required, a quantile needs its SLO.
SLO_KEYS = {
    "ttftSloSeconds": "ttftQuantile",
    "itlSloSeconds": "itlQuantile",
    "latencySloSeconds": "latencyQuantile",
}
KNOWN_KEYS = frozenset(_FIELDS) | KEDA_KEYS


def _float(key: str, raw: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise MetadataError(key, f"expected a number, got {echo(raw)}") from None
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise MetadataError(key, f"{value} is outside {bound}")
    return value


def _int(key: str, raw: str, *, low: int, high: int) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d{1,9}", text):
        raise MetadataError(key, f"expected an integer, got {echo(raw)}")
    value = int(text)
    if not low <= value <= high:
        raise MetadataError(key, f"{value} is outside [{low}, {high}]")
    return value


def _query(key: str, raw: str) -> str:
    text = raw.strip()
    if not text or len(text) > MAX_QUERY_CHARS:
        raise MetadataError(key, f"expected a PromQL expression of 1 to {MAX_QUERY_CHARS} characters")
    return text


def _headers(key: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``Name=value,Name2=value2`` (KEDA prometheus scaler's format).

    Which names may actually be sent is the operator's choice (``--allowed-metadata-headers``, checked
    where the request is made); names in ``FORBIDDEN_HEADERS`` are refused here whatever it allows.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME_RE.fullmatch(name):
            raise MetadataError(key, f"expected Name=value pairs separated by commas, got {echo(item)}")
        if any(c in value for c in "\r\n\0"):
            raise MetadataError(key, f"header {echo(name)} value contains a control character")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise MetadataError(key, f"header {echo(name)} value is not Latin-1 (HTTP header text)") from None
        if header_forbidden(name):
            raise MetadataError(
                key, f"header {echo(name)} may not be set from metadata (credentials come from files)"
            )
        if name.lower() in seen:
            raise MetadataError(key, f"header {echo(name)} given twice")
        seen.add(name.lower())
        out.append((name, value))
    if len(out) > MAX_CUSTOM_HEADERS:
        raise MetadataError(key, f"at most {MAX_CUSTOM_HEADERS} headers")
    return tuple(out)


def check_limits(metadata: Mapping[str, str]) -> None:
    """Refuse metadata past the documented limits before anything else reads, copies or keeps it."""
    if len(metadata) > MAX_METADATA_KEYS:
        raise MetadataError("scalerMetadata", f"{len(metadata)} keys; at most {MAX_METADATA_KEYS}")
    total = 0
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MetadataError(str(key)[:MAX_ECHO_CHARS], "keys and values must be strings")
        if len(key) > MAX_KEY_CHARS:
            raise MetadataError(key[:MAX_ECHO_CHARS] + "...", f"key longer than {MAX_KEY_CHARS} characters")
        size = len(value.encode("utf-8", errors="surrogatepass"))
        if size > MAX_VALUE_BYTES:
            raise MetadataError(key, f"value of {size} bytes; at most {MAX_VALUE_BYTES}")
        total += size + len(key)
    if total > MAX_METADATA_BYTES:
        raise MetadataError("scalerMetadata", f"{total} bytes in all; at most {MAX_METADATA_BYTES}")


def _resolve_aliases(metadata: Mapping[str, str]) -> dict[str, str]:
    check_limits(metadata)
    merged: dict[str, str] = {}
    for key, value in metadata.items():
        base = key[: -len("FromEnv")] if key.endswith("FromEnv") and key != "FromEnv" else key
        if base not in KNOWN_KEYS:
            raise MetadataError(key, f"unknown key (known: {', '.join(sorted(_FIELDS))})")
        if base in merged:
            raise MetadataError(key, f"given twice (as {base!r} and {key!r})")
        merged[base] = value
    if "headroom" in merged and "targetUtilization" in merged:
        raise MetadataError("headroom", "give either headroom or targetUtilization, not both")
    return merged


def parse_metadata(metadata: Mapping[str, str], default_namespace: str = "") -> TriggerConfig:
    """Validate ``metadata`` (all strings, as KEDA sends it) into a ``TriggerConfig``.

    ``default_namespace`` is the ScaledObjectRef's namespace, used when ``namespace`` is absent.
    """
    m = _resolve_aliases(metadata)
    kw: dict[str, object] = {}

    namespace = m.get("namespace", default_namespace).strip()
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise MetadataError("namespace", f"{echo(namespace)} is not a Kubernetes namespace name")
    kw["namespace"] = namespace
    if "workload" not in m:
        raise MetadataError(
            "workload", "required: the Deployment/StatefulSet name the exporter labels pods with"
        )
    workload = m["workload"].strip()
    if not _WORKLOAD_RE.fullmatch(workload):
        raise MetadataError("workload", f"{echo(workload)} is not a Kubernetes object name")
    kw["workload"] = workload
    given = [key for key in SLO_KEYS if key in m]
    if not given:
        raise MetadataError(
            "ttftSloSeconds",
            "required: at least one SLO: ttftSloSeconds (time to first token), itlSloSeconds (inter-token "
            "latency) or latencySloSeconds (end to end), in seconds, e.g. '0.5'",
        )
    for key, quantile_key in SLO_KEYS.items():
        if key in m:
            kw[_FIELDS[key]] = _float(key, m[key], low=0, high=3600, low_open=True)
            if quantile_key in m:
                kw[_FIELDS[quantile_key]] = _float(
                    quantile_key, m[quantile_key], low=0, high=0.9999, low_open=True
                )
        elif quantile_key in m:
            raise MetadataError(quantile_key, f"given without {key}: a quantile of which SLO?")
    if "latencyQuery" in m and "latencySloSeconds" not in m:
        raise MetadataError(
            "latencyQuery", "replaces the end-to-end latency quantile: give latencySloSeconds"
        )

    if "serverAddress" in m:
        address = m["serverAddress"].strip().rstrip("/")
        if not _URL_RE.fullmatch(address):
            raise MetadataError(
                "serverAddress", f"expected http(s)://host[:port][/path], got {echo(address)}"
            )
        kw["server_address"] = address
    for key in ("latencyQuery", "activationQuery"):
        if key in m:
            kw[_FIELDS[key]] = _query(key, m[key])
    for key in ("targetJoulesPerRequest", "powerBudgetWatts", "replicaPowerWatts", "replicaCapacityRps"):
        if key in m:
            kw[_FIELDS[key]] = _float(key, m[key], low=0, high=1e9, low_open=True)
    if "mode" in m:
        try:
            kw["mode"] = Mode(m["mode"].strip().lower())
        except ValueError:
            raise MetadataError("mode", f"expected 'enforce' or 'advisory', got {echo(m['mode'])}") from None
    for key, high in (
        ("idleBeforeZeroSeconds", 86400.0),
        ("stabilizationWindowSeconds", 86400.0),
        ("capacityLookbackSeconds", 7 * 86400.0),
        ("breachSettleSeconds", 3600.0),
    ):
        if key in m:
            low = {"stabilizationWindowSeconds": 0.0, "breachSettleSeconds": 15.0}.get(key, 60.0)
            kw[_FIELDS[key]] = _float(key, m[key], low=low, high=high)
    if "stalenessSeconds" in m:
        kw["staleness_s"] = _float("stalenessSeconds", m["stalenessSeconds"], low=1, high=3600)
    if "activationRps" in m:
        kw["activation_rps"] = _float("activationRps", m["activationRps"], low=0, high=1e9, low_open=True)
    if "queryTimeoutSeconds" in m:
        kw["query_timeout_s"] = _float(
            "queryTimeoutSeconds", m["queryTimeoutSeconds"], low=0, high=MAX_QUERY_TIMEOUT_S, low_open=True
        )
    if "customHeaders" in m:
        kw["custom_headers"] = _headers("customHeaders", m["customHeaders"])
    if "coldStartSeconds" in m:
        kw["cold_start_s"] = _float("coldStartSeconds", m["coldStartSeconds"], low=1, high=3600)
    if "seasonSeconds" in m:
        season = _float("seasonSeconds", m["seasonSeconds"], low=0, high=7 * 86400.0)
        if 0 < season < 600:
            raise MetadataError("seasonSeconds", f"{season} is neither 0 (off) nor in [600, 604800]")
        kw["season_s"] = season or None
    if "capacityInputs" in m:
        inputs = m["capacityInputs"].strip().lower()
        if inputs not in ("raw", "recorded"):
            raise MetadataError(
                "capacityInputs", f"expected 'raw' or 'recorded', got {echo(m['capacityInputs'])}"
            )
        kw["capacity_inputs"] = inputs
    if "learnCapacity" in m:
        raw = m["learnCapacity"].strip().lower()
        if raw not in ("true", "false"):
            raise MetadataError(
                "learnCapacity", f"expected 'true' or 'false', got {echo(m['learnCapacity'])}"
            )
        if raw == "false" and "replicaCapacityRps" not in m:
            raise MetadataError(
                "learnCapacity", "'false' needs replicaCapacityRps: no capacity would be known"
            )
        kw["learn_capacity"] = raw == "true"
    if "kvSaturationRatio" in m:
        kw["kv_saturation_ratio"] = _float(
            "kvSaturationRatio", m["kvSaturationRatio"], low=0, high=1, low_open=True
        )
    if "breachSignificance" in m:
        # 0 turns the evidence test off (every ratio over 1 is a breach); above 0.5 it is no test.
        kw["breach_significance"] = _float("breachSignificance", m["breachSignificance"], low=0, high=0.5)

    min_r = _int("minReplicas", m["minReplicas"], low=0, high=100000) if "minReplicas" in m else 0
    max_r = _int("maxReplicas", m["maxReplicas"], low=1, high=100000) if "maxReplicas" in m else 100
    if min_r > max_r:
        raise MetadataError("minReplicas", f"{min_r} is above maxReplicas {max_r}")
    kw["min_replicas"], kw["max_replicas"] = min_r, max_r

    target = DEFAULT_TARGET_UTILIZATION
    if "targetUtilization" in m:
        target = _float("targetUtilization", m["targetUtilization"], low=0, high=1, low_open=True)
    elif "headroom" in m:
        target = 1 - _float("headroom", m["headroom"], low=0, high=0.95)
    kw["target_utilization"] = target
    key_down = "scaleDownUtilization"
    if key_down in m:
        down = _float(key_down, m[key_down], low=0, high=1, low_open=True)
        if down > target:
            raise MetadataError(key_down, f"{down} is above the target utilisation {target}")
    else:
        down = DEFAULT_SCALE_DOWN_SHARE * target
    kw["scale_down_utilization"] = down

    config = TriggerConfig(**kw)  # type: ignore[arg-type]
    budget, watts = config.power_budget_watts, config.replica_power_watts
    # A budget that cannot hold minReplicas is a configuration conflict worth refusing up front.
    if budget is not None and watts is not None and watts * config.min_replicas > budget:
        raise MetadataError("powerBudgetWatts", "cannot hold minReplicas at replicaPowerWatts")
    return config
