"""The sidecar's own metrics (names fixed by the project brief), served by ``common.metrics_server``.

Per-GPU series carry ``uuid``; pod-level ones (latency, target latency, dry-run) carry none; namespace
and pod come from the PodMonitor's target labels.

With ``--apply-via agent`` the same page carries the request the node agent reads
(``REQUEST_WATTS``/``REQUEST_CLOCK`` per GPU, ``REQUEST_TIMESTAMP`` once): these names are the wire
contract between the sidecar and ``eo-node-agent`` (``nodeagent.requests`` parses them).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

STATES: tuple[str, ...] = ("controlling", "holding", "restored", "dry_run", "error")
REQUEST_WATTS = "eo_powercap_requested_watts"
REQUEST_CLOCK = "eo_powercap_requested_sm_clock_hertz"
REQUEST_TIMESTAMP = "eo_powercap_request_timestamp_seconds"


class PowercapMetrics:
    def __init__(self, registry: CollectorRegistry, requests: bool = False, governor: bool = False) -> None:
        """``requests``: publish the node agent's request (``--apply-via agent``, not dry-run); otherwise
        those families are absent, so the agent never mistakes another mode's page for a request."""
        self.registry = registry
        self.requests = requests

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("uuid",)) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.target_watts = gauge(
            "eo_powercap_target_watts", "Power limit the controller wants in force (W)."
        )
        self.applied_watts = gauge("eo_powercap_applied_watts", "Power limit in force on the GPU (W).")
        self.floor_watts = gauge("eo_powercap_floor_watts", "Lowest power limit the sidecar may set (W).")
        self.ceiling_watts = gauge(
            "eo_powercap_ceiling_watts", "Highest power limit the sidecar may set (W)."
        )
        self.original_watts = gauge(
            "eo_powercap_original_watts", "The GPU's power limit before the sidecar touched it (W)."
        )
        self.target_clock = gauge(
            "eo_powercap_target_sm_clock_hertz", "Highest SM clock the controller wants allowed (Hz)."
        )
        self.applied_clock = gauge(
            "eo_powercap_applied_sm_clock_hertz",
            "Highest SM clock allowed: the locked maximum, or the GPU's maximum when unlocked (Hz).",
        )
        self.changes = Counter(
            "eo_powercap_changes",
            "Changes the sidecar made (or, in dry-run, would make).",
            ("uuid", "reason"),
            registry=registry,
        )
        self.dry_run = Gauge("eo_powercap_dry_run", "1 when the sidecar sets nothing.", registry=registry)
        self.state = gauge("eo_powercap_state", "1 for the GPU's current state.", ("uuid", "state"))
        self.latency = Gauge(
            "eo_powercap_latency_seconds", "Observed latency quantile over the window (s).", registry=registry
        )
        request_registry = registry if requests else None
        self.requested_watts = Gauge(
            REQUEST_WATTS,
            "Power limit this sidecar asks the node agent to put in force (W).",
            ("uuid",),
            registry=request_registry,
        )
        self.requested_clock = Gauge(
            REQUEST_CLOCK,
            "Highest SM clock this sidecar asks the node agent to allow (Hz).",
            ("uuid",),
            registry=request_registry,
        )
        self.request_timestamp = Gauge(
            REQUEST_TIMESTAMP,
            "Unix time this sidecar last decided its request; the node agent refuses one that goes back "
            "and restores the GPU when it stops moving (s).",
            registry=request_registry,
        )
        self.latency_target = Gauge(
            "eo_powercap_latency_target_seconds", "Latency the controller holds under (s).", registry=registry
        )
        self.decisions = Counter(
            "eo_powercap_decisions",
            "Decisions by reason, every interval, holds included (the clock governor's reasons: "
            "feedforward, feedforward_hold, queue_forming, scale_up_bridge, state_unusable, state_frozen).",
            ("reason",),
            registry=registry,
        )
        self.ttft_target = Gauge(
            "eo_powercap_ttft_target_seconds",
            "Time-to-first-token target the governor holds (s; NaN without one); absent without it.",
            registry=registry if governor else None,
        )
        self.itl_target = Gauge(
            "eo_powercap_itl_target_seconds",
            "Inter-token latency target the governor holds (s; NaN without one); absent without it.",
            registry=registry if governor else None,
        )
        self.scaling_up = Gauge(
            "eo_powercap_workload_scaling_up",
            "1 while the workload is scaling up (the cold-start bridge holds the ceiling), 0 when not, NaN "
            "when unknown; absent without the governor.",
            registry=registry if governor else None,
        )

    def set_state(self, uuid: str, state: str) -> None:
        for s in STATES:
            self.state.labels(uuid=uuid, state=s).set(1.0 if s == state else 0.0)
