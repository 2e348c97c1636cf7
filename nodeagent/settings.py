"""``eo-node-agent``'s settings, each declared once (a ``common.settings.BinarySettings``): every flag is
also an ``EO_*`` variable, a bad value refuses the start naming both (exit status 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, model_validator

from common.settings import BinarySettings, Flag, OptionalPath, OptionalText, Port, Seconds, setting
from nodeagent.decide import Bounds

DEFAULT_STATE_DIR = Path("/var/lib/energy-orchestrator/powercap")
DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class StartupRefused(Exception):
    """The agent must not start; the message says why. The CLI exits 2 with it."""


def _names(value: object) -> object:
    """``a,b , c`` into a tuple of names (a sequence passes as it is)."""
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Settings(BinarySettings):
    """Everything ``eo-node-agent`` takes. Each flag ``--some-flag`` is also ``EO_SOME_FLAG``."""

    # -- who may ask -------------------------------------------------------------------------------------
    namespaces: Names = setting(
        (),
        "comma-separated namespaces whose opted-in pods (annotation energy-orchestrator.io/power-agent: "
        '"true") may ask for caps; empty: none may',
    )
    request_port: Port = setting(9104, "port of the sidecars' /metrics, where their requests are read")
    request_timeout_s: Seconds = setting(
        1.0, "total deadline of one request read (connect, headers, body)", flag="--request-timeout-seconds"
    )
    # -- the rules ---------------------------------------------------------------------------------------
    poll_interval_s: Seconds = setting(1.0, "how often requests are read", flag="--poll-interval-seconds")
    stale_after_s: Seconds = setting(
        30.0,
        "restore a GPU when the pod that asked has not confirmed its request for this long",
        flag="--stale-after-seconds",
    )
    min_change_interval_s: NonNegative = setting(
        2.0,
        "refuse a lowering sooner than this after the last change of that GPU (raising is never limited)",
        flag="--min-change-interval-seconds",
    )
    floor_w: Positive | None = setting(
        None, "lowest power limit any pod may ask for (default: the GPU's minimum)", flag="--floor-watts"
    )
    floor_mhz: Positive | None = setting(
        None,
        "lowest SM clock cap any pod may ask for (default: the GPU's lowest)",
        flag="--floor-sm-clock-mhz",
    )
    # -- GPUs and the node -------------------------------------------------------------------------------
    gpu_backend: Literal["nvml", "simulated"] = setting("nvml", "GPU access: nvml, or simulated GPUs")
    simulated_gpus: int = setting(1, "number of simulated GPUs", ge=1)
    simulated_unprivileged: Flag = setting(False, "simulated GPUs refuse setters as without CAP_SYS_ADMIN")
    kubelet_socket: str = setting(DEFAULT_KUBELET_SOCKET, "the kubelet's PodResources socket")
    kubelet_timeout_s: Seconds = setting(
        1.0, "deadline of one PodResources List call", flag="--kubelet-timeout-seconds"
    )
    node_name: str = setting("", "this node (downward API spec.nodeName): the pods to watch")
    state_dir: Path = setting(
        DEFAULT_STATE_DIR,
        "node directory (hostPath) for the originals, shared with direct-mode sidecars (one format)",
    )
    lock_dir: OptionalPath = setting(None, "node directory for per-GPU locks (default: STATE_DIR/locks)")
    listen_address: str = setting("0.0.0.0", "address of /metrics and /healthz")
    port: Port = setting(9105, "port of /metrics and /healthz")
    # -- Kubernetes --------------------------------------------------------------------------------------
    kube_api_url: OptionalText = setting(None, "API server URL (default: in-cluster)")
    kube_token_file: Path = setting(_SERVICE_ACCOUNT / "token", "service-account token")
    kube_ca_file: Path = setting(_SERVICE_ACCOUNT / "ca.crt", "API server CA bundle")
    kube_events: Literal["auto", "on", "off"] = setting(
        "auto", "post an Event on the pod per change, restore and refusal: on, off, or auto (in a cluster)"
    )
    # -- logging -----------------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = setting("text", "log line format: text or json")
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "log level: debug, info, warning or error"
    )

    @model_validator(mode="after")
    def _reads_fit_the_window(self) -> Self:
        if self.poll_interval_s + self.request_timeout_s >= self.stale_after_s:
            fields = ("poll_interval_s", "request_timeout_s", "stale_after_s")
            poll, timeout, stale = (self.flag_for(f) for f in fields)
            raise ValueError(
                f"{poll} plus {timeout} must be under {stale} {self.variables_for(*fields)}: a live "
                "sidecar would otherwise look stale"
            )
        return self

    @property
    def locks(self) -> Path:
        return self.lock_dir if self.lock_dir is not None else self.state_dir / "locks"

    @property
    def bounds(self) -> Bounds:
        return Bounds(
            stale_after_s=self.stale_after_s,
            min_change_interval_s=self.min_change_interval_s,
            floor_w=self.floor_w,
            floor_mhz=self.floor_mhz,
        )
