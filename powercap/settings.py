"""``eo-powercap``'s settings, each declared once, and the one conversion to the controller's config.

``Settings`` is a ``common.settings.BinarySettings``: every field's unit (in its name), default,
validation, flag, ``EO_*`` variable and help text are declared here, and the command line, the
environment reading and ``--help`` are derived from them (``powercap.main``). A bad value refuses the
start with the flag and the variable named (exit status 2); checks that span fields (floor at most
ceiling, the deadband's ratios in order, a histogram to read) are the model validators below.

``controller_config(settings, gpus)`` turns the settings and the GPUs' own range into the pure
controller's ``ControllerConfig``; the sidecar and the simulator both use it, so the simulator runs the
control law with exactly the bounds the sidecar would.

The control law's defaults (ratios, settle time, breach memory, ...) are declared once, on
``ControllerConfig``, and taken from there; its own checks stay too, because the pure ``step()`` must
refuse a bad config whoever builds it, while the checks here name the flag a user got wrong before any
GPU is opened.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from common.settings import (
    BinarySettings,
    Flag,
    OptionalPath,
    OptionalText,
    Port,
    Seconds,
    setting,
)
from powercap.controller import ACTUATORS, ControllerConfig
from powercap.governor import GovernorConfig
from powercap.latency import LATENCY_KINDS, SERVERS, preset
from powercap.scaleup import SOURCES, default_query, valid_name

DEFAULT_STATE_DIR = Path("/var/lib/energy-orchestrator/powercap")
_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class StartupRefused(Exception):
    """The sidecar must not start; the message says why and what to do. The CLI exits 2 with it."""


def _default(config: type[ControllerConfig | GovernorConfig], name: str) -> float:
    default = next(f.default for f in dataclasses.fields(config) if f.name == name)
    assert isinstance(default, float), name
    return default


def _law(name: str) -> float:
    """The control law's default for ``name``, declared on ``ControllerConfig``."""
    return _default(ControllerConfig, name)


def _governed(name: str) -> float:
    """The governor's default for ``name``, declared on ``GovernorConfig``."""
    return _default(GovernorConfig, name)


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value[:40]!r} is not one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


def _labels(value: object) -> object:
    """``key=value,key=value`` into a mapping (a mapping passes as it is)."""
    if not isinstance(value, str):
        return value
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, label = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part[:40]!r} is not key=value")
        labels[key.strip()] = label.strip()
    return labels


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Actuator = Annotated[str, _one_of(ACTUATORS)]
Server = Annotated[str, _one_of(SERVERS)]
LatencyKind = Annotated[str, _one_of(LATENCY_KINDS)]
Labels = Annotated[dict[str, str], BeforeValidator(_labels)]
ScaleUpSource = Annotated[str, _one_of(SOURCES)]


class Settings(BinarySettings):
    """Everything ``eo-powercap`` takes. Each flag ``--some-flag`` is also ``EO_SOME_FLAG``."""

    # -- GPUs ------------------------------------------------------------------------------------------
    gpu_backend: Literal["nvml", "simulated"] = setting("nvml", "GPU access: nvml, or simulated GPUs")
    gpu_uuids: str = setting("", "comma-separated GPU UUIDs to control (default: the visible GPUs)")
    gpu_uuids_file: OptionalPath = setting(
        None,
        "file holding the GPU UUIDs to control, written by the container that holds the GPUs (its "
        "NVIDIA_VISIBLE_DEVICES); waited for, then read once",
    )
    gpu_uuids_wait_s: NonNegative = setting(
        600.0,
        "how long to wait for --gpu-uuids-file to appear before refusing to start",
        flag="--gpu-uuids-wait-seconds",
    )
    simulated_gpus: int = setting(1, "number of simulated GPUs", ge=1)
    simulated_unprivileged: Flag = setting(False, "simulated GPUs refuse setters as without CAP_SYS_ADMIN")
    actuator: Actuator = setting("power", "power (the power limit), or clocks (locked SM clocks)")
    dry_run: Flag = setting(False, "compute and publish what would be set; set nothing")
    apply_via: Literal["direct", "agent"] = setting(
        "direct",
        "who puts the setpoint on the GPU: direct (this sidecar, needing root with CAP_SYS_ADMIN and the "
        "node's state directory), or agent (the node agent eo-node-agent reads the request this sidecar "
        "publishes on /metrics; the sidecar sets nothing and needs no privilege)",
    )

    # -- latency ---------------------------------------------------------------------------------------
    latency_target_s: Seconds = setting(
        ..., "latency the quantile must stay under (required)", flag="--latency-target-seconds"
    )
    latency_quantile: float = setting(
        0.95, "quantile held under the target, in (0, 1)", gt=0, lt=1, allow_inf_nan=False
    )
    latency_window_s: Seconds = setting(
        60.0, "sliding window the quantile covers", flag="--latency-window-seconds"
    )
    latency_source: Literal["metrics", "prometheus"] = setting(
        "metrics", "where latency comes from: metrics (--metrics-url), or prometheus"
    )
    metrics_url: str = setting("http://127.0.0.1:8000/metrics", "the inference server's /metrics")
    server: Server = setting(
        "vllm", f"inference server format, one of {', '.join(SERVERS)} (chooses the histogram)"
    )
    latency_kind: LatencyKind = setting(
        "e2e", "e2e (end to end), ttft (time to first token) or itl (inter-token)"
    )
    latency_metric: OptionalText = setting(None, "histogram name, overriding --server/--latency-kind")
    latency_scale: Positive | None = setting(
        None, "factor from the histogram's unit to seconds (ms: 0.001; default: the server's)"
    )
    latency_labels: Labels = setting("", "only series with these labels, e.g. model_name=llama")
    scrape_timeout_s: Seconds = setting(
        2.0,
        "total deadline of one /metrics scrape (connect, headers, body); at most --interval-seconds",
        flag="--scrape-timeout-seconds",
    )
    prometheus_url: str = setting("http://prometheus:9090", "Prometheus (or compatible) base URL")
    prometheus_query: OptionalText = setting(
        None, "PromQL giving the latency in seconds (default: the pod's quantile)"
    )
    prometheus_load_query: OptionalText = setting(
        None, "PromQL giving requests per second (default with the default query: the pod's rate)"
    )
    prometheus_bearer_token_file: OptionalPath = setting(None, "bearer token file for Prometheus")
    prometheus_timeout_s: Seconds = setting(
        5.0,
        "total deadline of one Prometheus read (latency and load queries together); at most "
        "--interval-seconds",
        flag="--prometheus-timeout-seconds",
    )

    # -- controller (docs/powercap.md explains the tuning) ----------------------------------------------
    interval_s: Seconds = setting(5.0, "control interval", flag="--interval-seconds")
    floor_w: Positive | None = setting(
        None, "lowest power limit (default: the GPU's minimum)", flag="--floor-watts"
    )
    ceiling_w: Positive | None = setting(
        None,
        "highest power limit (default: the original limit: never above how the sidecar found the GPU)",
        flag="--ceiling-watts",
    )
    max_step_w: Positive = setting(25.0, "largest step down per interval", flag="--max-step-watts")
    floor_mhz: Positive | None = setting(
        None, "lowest SM clock cap (default: the GPU's lowest clock)", flag="--floor-sm-clock-mhz"
    )
    ceiling_mhz: Positive | None = setting(
        None, "highest SM clock cap (default: the GPU's maximum)", flag="--ceiling-sm-clock-mhz"
    )
    max_step_mhz: Positive = setting(90.0, "largest clock step down per interval", flag="--max-step-mhz")
    lower_below_ratio: Ratio = setting(
        _law("lower_below_ratio"), "lower while latency/target is below this (below --raise-above-ratio)"
    )
    raise_above_ratio: Ratio = setting(
        _law("raise_above_ratio"), "raise when latency/target exceeds this, in (0, 1]"
    )
    raise_fraction: Ratio = setting(
        _law("raise_fraction"), "share of the gap to the ceiling closed by one raise, in (0, 1]"
    )
    settle_s: NonNegative = setting(
        _law("settle_s"), "wait after a change before lowering again", flag="--settle-seconds"
    )
    stale_after_s: Seconds = setting(
        _law("stale_after_s"), "restore the original when latency data is older", flag="--stale-after-seconds"
    )
    thermal_margin_c: NonNegative = setting(
        _law("thermal_margin_c"),
        "lower when this close to the slowdown temperature",
        flag="--thermal-margin-celsius",
    )
    breach_memory_s: NonNegative = setting(
        _law("breach_memory_s"),
        "stay above a setting that breached for this long",
        flag="--breach-memory-seconds",
    )
    load_jump_ratio: NonNegative = setting(
        _law("load_jump_ratio"), "raise when load jumps by this ratio (0: off)"
    )
    error_backoff_s: NonNegative = setting(
        60.0, "pause control of a GPU after an NVML error", flag="--error-backoff-seconds"
    )

    # -- the clock governor (docs/powercap.md, "The clock governor") ------------------------------------
    control: Literal["auto", "feedback", "governor"] = setting(
        "auto",
        "the control law: feedback (the latency loop alone), governor (feedforward from the server's "
        "batch, queue and KV use toward TTFT/ITL targets, with the latency loop as feedback; needs "
        "--actuator clocks), or auto (governor when a TTFT or ITL target is given, else feedback)",
    )
    ttft_target_s: Positive | None = setting(
        None,
        "time-to-first-token target the governor holds (the trigger's ttftSloSeconds; times --target-share)",
        flag="--ttft-target-seconds",
    )
    itl_target_s: Positive | None = setting(
        None,
        "inter-token latency target (each request's mean time per output token) the governor holds "
        "(the trigger's itlSloSeconds; times --target-share)",
        flag="--itl-target-seconds",
    )
    target_share: Ratio = setting(
        1.0,
        "share of --ttft-target-seconds and --itl-target-seconds the governor aims at, in (0, 1]: "
        "copy the trigger's SLOs and leave the scaler room with one number",
    )
    target_quantile: float = setting(
        0.99,
        "share of requests the governor holds within its TTFT and ITL targets, in (0, 1)",
        gt=0,
        lt=1,
        allow_inf_nan=False,
    )
    ttft_history_s: Seconds = setting(
        _governed("ttft_history_s"),
        "how long the governor's feedforward keeps each interval's first tokens, each with the clock "
        "it came at (the breach rule judges --latency-window-seconds)",
        flag="--ttft-history-seconds",
    )
    breach_significance: float = setting(
        _governed("breach_significance"),
        "a TTFT miss share over the budget jumps the clock to its ceiling only when that many misses "
        "would come less often than this at the budget's own rate, in [0, 1) (0: every share over it)",
        ge=0,
        lt=1,
        allow_inf_nan=False,
    )
    workload: str = setting(
        "",
        "this pod's workload (its Deployment), as eo-scaler and kube-state-metrics name it: what the "
        "cold-start bridge asks about (empty: no bridge)",
    )
    scale_up_source: ScaleUpSource = setting(
        "scaler",
        "where the cold-start bridge learns that the workload is scaling up, from --prometheus-url: "
        "scaler (eo_scaler_desired_replicas above eo_scaler_current_replicas), kube-state-metrics "
        "(kube_deployment_spec_replicas above kube_deployment_status_replicas_available), or off",
    )
    scale_up_query: OptionalText = setting(
        None, "PromQL above 0 while the workload is scaling up, instead of --scale-up-source's"
    )
    power_budget_w: Positive | None = setting(
        None,
        "power limit per GPU held while the clocks move (the budget guard: a node or rack budget split "
        "per GPU); restored by the same rules as the clocks; needs --actuator clocks",
        flag="--power-budget-watts",
    )

    # -- state, locks, serving -------------------------------------------------------------------------
    state_dir: Path = setting(DEFAULT_STATE_DIR, "node directory (hostPath) for the persisted originals")
    lock_dir: OptionalPath = setting(
        None,
        "node directory (hostPath) for per-GPU locks (default: STATE_DIR/locks); must be node-wide for "
        "two writers to see each other",
    )
    listen_address: str = setting("0.0.0.0", "address of /metrics and /healthz")
    port: Port = setting(9104, "port of /metrics and /healthz")

    # -- Kubernetes ------------------------------------------------------------------------------------
    pod_name: str = setting("", "this pod (downward API metadata.name)")
    pod_namespace: str = setting("", "this pod's namespace (downward API metadata.namespace)")
    pod_uid: str = setting("", "this pod's UID (downward API metadata.uid)")
    node_name: str = setting("", "this node (downward API spec.nodeName)")
    kube_events: Literal["auto", "on", "off"] = setting(
        "auto", "post an Event per change: on, off, or auto (in a cluster)"
    )
    kube_api_url: OptionalText = setting(None, "API server URL (default: in-cluster)")
    kube_token_file: Path = setting(_SERVICE_ACCOUNT / "token", "service-account token")
    kube_ca_file: Path = setting(_SERVICE_ACCOUNT / "ca.crt", "API server CA bundle")

    # -- logging ---------------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = setting("text", "log line format: text or json")
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "log level: debug, info, warning or error"
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Self:
        flag, variables = self.flag_for, self.variables_for
        for low, high in (("floor_w", "ceiling_w"), ("floor_mhz", "ceiling_mhz")):
            floor, ceiling = getattr(self, low), getattr(self, high)
            if floor is not None and ceiling is not None and floor > ceiling:
                raise ValueError(
                    f"{flag(low)} ({floor}) is above {flag(high)} ({ceiling}) {variables(low, high)}"
                )
        if not self.lower_below_ratio < self.raise_above_ratio:
            raise ValueError(
                f"{flag('lower_below_ratio')} and {flag('raise_above_ratio')}: need 0 < lower < raise "
                f"<= 1, got {self.lower_below_ratio} and {self.raise_above_ratio} "
                f"{variables('lower_below_ratio', 'raise_above_ratio')}"
            )
        return self

    @model_validator(mode="after")
    def _latency_readable(self) -> Self:
        flag, variables = self.flag_for, self.variables_for
        if self.latency_source == "prometheus":
            if self.prometheus_query is None and not (self.pod_name and self.pod_namespace):
                raise ValueError(
                    f"{flag('prometheus_query')}, or {flag('pod_name')} and {flag('pod_namespace')} "
                    f"for the default query {variables('prometheus_query', 'pod_name', 'pod_namespace')}"
                )
        elif self.latency_metric is None:
            try:
                preset(self.server, self.latency_kind)
            except ValueError as exc:
                raise ValueError(f"{exc} {variables('server', 'latency_kind', 'latency_metric')}") from None
        return self

    @model_validator(mode="after")
    def _governor_consistent(self) -> Self:
        flag, variables = self.flag_for, self.variables_for
        targets = self.ttft_target_s is not None or self.itl_target_s is not None
        if self.control == "governor" and not targets:
            raise ValueError(
                f"{flag('control')} governor needs {flag('ttft_target_s')} or {flag('itl_target_s')} "
                f"{variables('control', 'ttft_target_s', 'itl_target_s')}"
            )
        if self.governs and self.actuator != "clocks":
            raise ValueError(
                f"the governor moves SM clocks: set {flag('actuator')} clocks, or {flag('control')} "
                f"feedback {variables('actuator', 'control', 'ttft_target_s', 'itl_target_s')}"
            )
        if self.power_budget_w is not None and self.actuator != "clocks":
            raise ValueError(
                f"{flag('power_budget_w')} is held alongside the clocks: set {flag('actuator')} clocks "
                f"(with the power actuator, {flag('ceiling_w')} is the budget) "
                f"{variables('power_budget_w', 'actuator', 'ceiling_w')}"
            )
        for field in ("workload", "pod_namespace"):
            value = getattr(self, field)
            if value and not valid_name(value):
                raise ValueError(f"{flag(field)}: {value[:60]!r} is not a Kubernetes name {variables(field)}")
        return self

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def governs(self) -> bool:
        """The clock governor runs (``--control governor``, or ``auto`` with a TTFT or ITL target)."""
        targets = self.ttft_target_s is not None or self.itl_target_s is not None
        return self.control == "governor" or (self.control == "auto" and targets)

    @property
    def scale_up_promql(self) -> str | None:
        """The cold-start bridge's query; None when there is none (no bridge: never a lower clock)."""
        if self.scale_up_query is not None:
            return self.scale_up_query
        return default_query(self.scale_up_source, self.pod_namespace, self.workload)

    @property
    def via_agent(self) -> bool:
        """The node agent applies: this sidecar publishes its request and never writes to the GPU."""
        return self.apply_via == "agent"

    @property
    def sets_nothing(self) -> bool:
        """No GPU write from this process: dry-run, or the node agent applies (no lock, no state file,
        no permission check, nothing to restore)."""
        return self.dry_run or self.via_agent

    @property
    def locks(self) -> Path:
        return self.lock_dir if self.lock_dir is not None else self.state_dir / "locks"

    @property
    def scrape_deadline_s(self) -> float:
        """One /metrics scrape's total deadline: never longer than one control interval (a slow source
        then delays a tick by at most one interval; restoring never waits on it anyway)."""
        return min(self.scrape_timeout_s, self.interval_s)

    @property
    def prometheus_deadline_s(self) -> float:
        """One Prometheus read's total deadline (both queries), bounded by the interval likewise."""
        return min(self.prometheus_timeout_s, self.interval_s)

    @property
    def latency_histogram(self) -> tuple[str, float]:
        """(histogram name, factor from its unit to seconds) read from ``--metrics-url``."""
        metric, scale = (
            (self.latency_metric, 1.0)
            if self.latency_metric is not None
            else preset(self.server, self.latency_kind)
        )
        return metric, self.latency_scale if self.latency_scale is not None else scale

    @property
    def prometheus_queries(self) -> tuple[str, str | None]:
        """(latency query, load query): the given ones, or the pod's quantile and request rate over the
        window from the exporter's mirrored histogram."""
        if self.prometheus_query is not None:
            return self.prometheus_query, self.prometheus_load_query
        pod = f'namespace="{self.pod_namespace}",pod="{self.pod_name}"'
        window = f"{int(self.latency_window_s)}s"
        latency = (
            f"histogram_quantile({self.latency_quantile}, "
            f"sum by (le) (rate(eo_pod_request_latency_seconds_bucket{{{pod}}}[{window}])))"
        )
        load = f"sum(rate(eo_pod_request_latency_seconds_count{{{pod}}}[{window}]))"
        return latency, self.prometheus_load_query or load


@dataclass(frozen=True)
class GpuRange:
    """What the controlled GPUs allow, in the actuator's unit (W or MHz): the range every one of them
    can be set to, and the setting they had before the sidecar touched them (the default ceiling)."""

    low: float
    high: float
    original: float


def governor_config(settings: Settings, gpus: GpuRange, clocks_mhz: tuple[float, ...]) -> GovernorConfig:
    """The clock governor's config: ``controller_config``'s bounds and tuning (its controller judges
    latency / target ratios: ``target_latency_s`` 1), the GPUs' settable clocks within them, and the
    TTFT and ITL targets times ``--target-share``."""
    ctrl = dataclasses.replace(controller_config(settings, gpus), target_latency_s=1.0)
    share = settings.target_share
    return GovernorConfig(
        ctrl,
        tuple(sorted(c for c in clocks_mhz if ctrl.floor <= c <= ctrl.ceiling)) or (ctrl.ceiling,),
        itl_target_s=settings.itl_target_s * share if settings.itl_target_s is not None else None,
        ttft_target_s=settings.ttft_target_s * share if settings.ttft_target_s is not None else None,
        quantile=settings.target_quantile,
        ttft_history_s=settings.ttft_history_s,
        breach_significance=settings.breach_significance,
    )


def controller_config(settings: Settings, gpus: GpuRange) -> ControllerConfig:
    """The controller's config: the settings' bounds (or the GPUs' own: floor the lowest settable,
    ceiling the original) intersected with the GPUs' range, and the control law's tuning.

    Raises ``StartupRefused`` when the intersection is empty (a floor above what the GPUs allow)."""
    power = settings.actuator == "power"
    floor_set, ceiling_set = (
        (settings.floor_w, settings.ceiling_w) if power else (settings.floor_mhz, settings.ceiling_mhz)
    )
    unit = "W" if power else "MHz"
    floor = max(floor_set if floor_set is not None else gpus.low, gpus.low)
    ceiling = min(ceiling_set if ceiling_set is not None else gpus.original, gpus.high)
    if floor > ceiling:
        raise StartupRefused(
            f"inconsistent bounds: floor {floor:g} {unit} is above ceiling {ceiling:g} {unit} once "
            f"intersected with the GPUs' own range [{gpus.low:g}, {gpus.high:g}] {unit} and original "
            "setting"
        )
    return ControllerConfig(
        actuator="power" if power else "clocks",
        floor=floor,
        ceiling=ceiling,
        target_latency_s=settings.latency_target_s,
        max_step_down=settings.max_step_w if power else settings.max_step_mhz,
        lower_below_ratio=settings.lower_below_ratio,
        raise_above_ratio=settings.raise_above_ratio,
        raise_fraction=settings.raise_fraction,
        settle_s=settings.settle_s,
        stale_after_s=settings.stale_after_s,
        thermal_margin_c=settings.thermal_margin_c,
        breach_memory_s=settings.breach_memory_s,
        load_jump_ratio=settings.load_jump_ratio,
    )
