"""The agent's loop around ``nodeagent.decide``, and ``start_node_agent``, its in-process factory.

Each cycle: list the kubelet's PodResources (which pod holds which GPU), look the holders up in the pod
cache (opt-in annotation, IP, UID), read the opted-in pods' requests in parallel (bounded reads, holding
no lock), then decide and carry the actions out under the write lock. A watchdog restores stale GPUs
between cycles under the write lock only, and ``stop`` (SIGTERM) restores every GPU at once, so neither
waits on a read. Every change, restore and refusal is counted, logged and posted as an Event on the pod.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prometheus_client import CollectorRegistry

from common import daemon
from common.daemon import GuardedLoops, serve_or_refuse, write_lock_or_not
from common.metrics_server import MetricsServerHandle
from devices.base import GpuDevice, GpuError
from exporter.pods.accounting import PodKey
from exporter.pods.kubelet import PodResourcesUnavailable
from exporter.pods.sampler import AllocationSource, PodMetadataSource
from nodeagent.decide import (
    NOT_OPTED_IN,
    SHUTDOWN,
    AgentState,
    Apply,
    Decision,
    Holdings,
    Pod,
    Read,
    Refuse,
    Restore,
    decide,
    expire,
    forget,
    holdings,
    restore_all,
)
from nodeagent.events import NullPodEvents, PodEvents
from nodeagent.gpus import GpuBusy, NodeGpus
from nodeagent.metrics import AgentMetrics
from nodeagent.requests import RequestReader, opted_in, request_port, url_of
from nodeagent.settings import Settings, StartupRefused
from powercap.events import CapEvent

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = daemon.SHUTDOWN_BUDGET_S
"""``NodeAgentHandle.stop`` (SIGTERM) restores and returns within this, whatever a cycle is reading."""
_QUIET_RESTORES = {"no_cap_requested", "request_withdrawn", SHUTDOWN}
AGENT_ERROR = "agent_error"
AGENT_RESTART = "agent_restart"
GPU_ERROR = "gpu_error"


class AgentParts(TypedDict, total=False):
    """What a test or the demo may put in place of the defaults (no Events, a private registry, the
    wall clock, the bounded HTTP request reader)."""

    events: PodEvents | None
    registry: CollectorRegistry | None
    wall_clock: Callable[[], float]
    reader: RequestReader | None


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        devices: Sequence[GpuDevice],
        kubelet: AllocationSource,
        pods: PodMetadataSource,
        **parts: Unpack[AgentParts],
    ) -> None:
        if not devices:
            raise StartupRefused("no GPU visible to the node agent (NVIDIA_VISIBLE_DEVICES=all?)")
        self.settings = settings
        self._kubelet = kubelet
        self._pods = pods
        self.events: PodEvents = parts.get("events") or NullPodEvents()
        self._clock = parts.get("wall_clock", time.time)
        self._reader = parts.get("reader") or RequestReader(settings.request_timeout_s)
        self._bounds = settings.bounds
        self._allowed = frozenset(settings.namespaces)
        self.metrics = AgentMetrics(parts.get("registry") or CollectorRegistry())
        self.gpus = NodeGpus(devices, settings.state_dir, settings.locks)
        self.state = AgentState()
        self.frozen = False
        self._kubelet_error: str | None = None
        self._pending: dict[str, tuple[Pod, str]] = {}
        """GPUs whose restore failed: retried every cycle and watchdog period."""
        self._published: dict[str, tuple[str, str, str, str]] = {}
        """The labels of each GPU's eo_node_agent_controlled series, removed with the restore."""
        self._released: dict[str, Pod] = {}
        """GPUs another writer took over from a pod: left alone until that pod no longer holds them."""
        # The cycle lock keeps cycles one at a time (held across the reads); the write lock guards the
        # state and every GPU write and is never held across a read. Stop and the watchdog take only it.
        self._cycle_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stopping = False
        self._last_cycle_s = time.monotonic()
        for found in self.gpus.recover():
            self.metrics.restores.labels(uuid=found.uuid, reason=AGENT_RESTART).inc()
            log.warning(
                "GPU %s: restored the original (%.0f W) a previous writer left capped%s",
                found.uuid,
                found.original_w,
                f" for {found.pod}" if found.pod else "",
            )
            namespace, _, name = found.pod.partition("/")
            if namespace and name:
                self.events.emit(
                    Pod(namespace, name),
                    CapEvent(
                        "PowerCapRestored",
                        f"GPU {found.uuid}: original setting ({found.original_w:.0f} W, clocks unlocked) "
                        f"restored by eo-node-agent at start ({AGENT_RESTART})",
                        warning=True,
                    ),
                )
        self.metrics.kubelet_up.set(0)

    # -- one cycle -----------------------------------------------------------------------------------
    def cycle(self) -> Decision | None:
        """Read, decide, act. None when the agent is stopping."""
        with self._cycle_lock:
            held = self._list_kubelet()
            wanted = set(held.exclusive) | set(held.shared) if held is not None else set()
            wanted |= {c.pod.key for c in self.state.controls.values()}
            targets: list[tuple[Pod, str | None]] = []
            not_allowed: list[Pod] = []
            for namespace, name in sorted(wanted):
                meta = self._pods.get(PodKey(namespace, name))
                if meta is None or not opted_in(meta.annotations):
                    continue
                pod = Pod(namespace, name, meta.uid)
                if namespace not in self._allowed:
                    not_allowed.append(pod)
                    continue
                port = request_port(meta.annotations, self.settings.request_port)
                targets.append((pod, url_of(meta.ip, port) if meta.ip and port else None))
            reads: list[Read] = self._reader.read_all(targets)
            facts = self.gpus.facts()
            with self._write_lock:
                if self._stopping:
                    return None
                self._retry_pending()
                self._forget_released(held)
                decision = decide(self.state, self._clock(), held, reads, not_allowed, facts, self._bounds)
                self._carry_out(decision)
                self._set_frozen(held is None)
                self._last_cycle_s = time.monotonic()
                return decision

    def enforce_staleness(self) -> Decision | None:
        """The watchdog's check: restore GPUs whose request went stale, whatever a cycle is reading."""
        with self._write_lock:
            if self._stopping:
                return None
            self._retry_pending()
            if not self.state.controls:
                return None
            decision = expire(self.state, self._clock(), self._bounds)
            self._carry_out(decision)
            return decision

    def _list_kubelet(self) -> Holdings | None:
        try:
            allocations = self._kubelet.list()
        except PodResourcesUnavailable as exc:
            if self._kubelet_error is None:
                log.error(
                    "cannot read the kubelet (%s): frozen at the last known good settings; nothing new is "
                    "applied, stale requests and shutdown still restore",
                    exc,
                )
            self._kubelet_error = str(exc)
            self.metrics.kubelet_up.set(0)
            return None
        if self._kubelet_error is not None:
            log.info("the kubelet answers again: no longer frozen")
        self._kubelet_error = None
        self.metrics.kubelet_up.set(1)
        return holdings(allocations)

    def _set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        self.metrics.frozen.set(1 if frozen else 0)

    # -- carrying the actions out (write lock held) ---------------------------------------------------
    def _carry_out(self, decision: Decision) -> None:
        self.state = decision.state
        for action in decision.actions:
            if isinstance(action, Apply):
                self._apply(action)
            elif isinstance(action, Restore):
                self._restore(action.uuid, action.pod, action.reason)
            else:
                self._refused(action)
        self.metrics.restore_pending.set(len(self._pending))

    def _apply(self, a: Apply) -> None:
        if a.uuid in self._pending or a.uuid in self._released:
            self.state = forget(self.state, a.uuid)
            busy = "its restore is pending" if a.uuid in self._pending else "another writer took it over"
            self._refused(Refuse(a.pod, a.uuid, "gpu_busy" if a.uuid in self._released else GPU_ERROR, busy))
            return
        try:
            in_force = self.gpus.apply(a.uuid, a.actuator, a.setpoint, str(a.pod), a.budget_w)
        except GpuBusy as exc:
            self.state = forget(self.state, a.uuid)
            if exc.foreign_write:
                self._released[a.uuid] = a.pod
                self.events.emit(
                    a.pod, CapEvent("PowerCapForeignWrite", f"{exc}; eo-node-agent stopped", True)
                )
            self._refused(Refuse(a.pod, a.uuid, "gpu_busy", str(exc)))
            return
        except GpuError as exc:
            self.state = forget(self.state, a.uuid)
            log.error("GPU %s: %s; restoring its original setting", a.uuid, exc)
            self.events.emit(a.pod, CapEvent("PowerCapError", f"GPU {a.uuid}: {exc}; restoring", True))
            self._restore(a.uuid, a.pod, GPU_ERROR)
            return
        power = a.actuator == "power"
        unit, what = ("W", "power limit") if power else ("MHz", "max SM clock")
        if a.previous is not None:
            before = a.previous
        else:
            before = self.gpus.original_w(a.uuid) if power else self.gpus.max_clock_mhz(a.uuid)
        self.metrics.changes.labels(uuid=a.uuid, reason=a.reason).inc()
        labels = (a.uuid, a.pod.namespace, a.pod.name, a.actuator)
        if self._published.get(a.uuid) != labels:
            self._unpublish(a.uuid)
        self._published[a.uuid] = labels
        self.metrics.controlled.labels(*labels).set(1)
        if power:
            self.metrics.setpoint_watts.labels(uuid=a.uuid).set(in_force)
        else:
            self.metrics.setpoint_clock.labels(uuid=a.uuid).set(in_force * 1e6)
            if a.budget_w is not None:
                self.metrics.setpoint_watts.labels(uuid=a.uuid).set(a.budget_w)
            else:
                with contextlib.suppress(KeyError):
                    self.metrics.setpoint_watts.remove(a.uuid)
        beside = f" with a {a.budget_w:.0f} W power limit" if a.budget_w is not None else ""
        message = (
            f"GPU {a.uuid}: {what} {a.reason} {before:.0f} -> {in_force:.0f} {unit}{beside}, as {a.pod}'s "
            f"eo-powercap asked (eo-node-agent on {self.settings.node_name or 'this node'})"
        )
        log.info(message)
        verb = a.reason.capitalize()
        self.events.emit(a.pod, CapEvent(("PowerCap" if power else "SmClockLimit") + verb, message))

    def _restore(self, uuid: str, pod: Pod, reason: str) -> None:
        try:
            had = self.gpus.restore(uuid)
        except GpuError as exc:
            if uuid not in self._pending:
                log.error("GPU %s: restore failed (%s); retried every cycle", uuid, exc)
            self._pending[uuid] = (pod, reason)
            return
        self._pending.pop(uuid, None)
        self._unpublish(uuid)
        if not had:
            return
        self.metrics.restores.labels(uuid=uuid, reason=reason).inc()
        message = f"GPU {uuid}: original setting restored for {pod} ({reason})"
        (log.info if reason in _QUIET_RESTORES else log.warning)(message)
        self.events.emit(pod, CapEvent("PowerCapRestored", message, warning=reason not in _QUIET_RESTORES))

    def _retry_pending(self) -> None:
        for uuid, (pod, reason) in list(self._pending.items()):
            self._restore(uuid, pod, reason)
        self.metrics.restore_pending.set(len(self._pending))

    def _forget_released(self, held: Holdings | None) -> None:
        if held is None:
            return
        for uuid, pod in list(self._released.items()):
            if uuid not in held.exclusive.get(pod.key, frozenset()) | held.shared.get(pod.key, frozenset()):
                del self._released[uuid]

    def _unpublish(self, uuid: str) -> None:
        for metric in (self.metrics.setpoint_watts, self.metrics.setpoint_clock):
            with contextlib.suppress(KeyError):
                metric.remove(uuid)
        labels = self._published.pop(uuid, None)
        if labels is not None:
            with contextlib.suppress(KeyError):
                self.metrics.controlled.remove(*labels)

    def _refused(self, r: Refuse) -> None:
        self.metrics.refusals.labels(reason=r.reason).inc()
        where = f" for GPU {r.uuid}" if r.uuid else ""
        message = f"refused {r.pod}'s request{where} ({r.reason}): {r.detail}; nothing applied"
        log.warning(message)
        if r.reason != NOT_OPTED_IN:
            # Not opted in: the operator never allowed that namespace, so the agent may post nothing there.
            self.events.emit(r.pod, CapEvent("PowerCapRequestRefused", message, warning=True))

    # -- health and shutdown -------------------------------------------------------------------------
    def healthy(self) -> bool:
        s = self.settings
        budget = 3 * s.poll_interval_s + s.request_timeout_s + s.kubelet_timeout_s + 1.0
        return time.monotonic() - self._last_cycle_s <= budget

    def health(self) -> tuple[bool, str]:
        if not self.healthy():
            return False, "agent loop stalled\n"
        return True, "ok (frozen: the kubelet cannot be read)\n" if self.frozen else "ok\n"

    def close_reader(self) -> None:
        self._reader.close()

    def restore_everything(self, reason: str) -> None:
        """Every GPU of ours back to its original now (after an unexpected error in a cycle)."""
        with self._write_lock:
            self._carry_out(restore_all(self.state, reason))

    def close(self) -> bool:
        """Stop for good: restore every GPU of ours (not waiting for a read), release the locks. True when
        every restore succeeded; a failed one leaves its state file saying controlling for the next run."""
        self._stopping = True
        with write_lock_or_not(self._write_lock, log):
            self._carry_out(restore_all(self.state, SHUTDOWN))
            self._retry_pending()
            return not self._pending


@dataclass
class NodeAgentHandle:
    agent: NodeAgent
    port: int
    _server: MetricsServerHandle
    _loops: GuardedLoops

    def stop(self) -> bool:
        """Restore every GPU and stop, within ``SHUTDOWN_BUDGET_S`` whatever a cycle is reading."""
        agent = self.agent
        return self._loops.shut_down(agent.close, self._server.stop, agent.close_reader, agent.events.close)


def start_node_agent(
    settings: Settings,
    devices: Sequence[GpuDevice],
    kubelet: AllocationSource,
    pods: PodMetadataSource,
    *,
    run_loop: bool = True,
    **parts: Unpack[AgentParts],
) -> NodeAgentHandle:
    """Start the agent in-process. ``run_loop=False`` leaves ``cycle`` and ``enforce_staleness`` to the
    caller (tests); otherwise a loop thread cycles every poll interval and a watchdog thread enforces
    staleness every min(poll interval, 1 s)."""
    agent = NodeAgent(settings, devices, kubelet, pods, **parts)
    server = serve_or_refuse(
        agent.metrics.registry,
        agent.health,
        address=settings.listen_address,
        port=settings.port,
        name="eo-node-agent",
        close=agent.close,
        refused=StartupRefused,
    )
    loops = GuardedLoops("eo-node-agent", log)
    if run_loop:
        loops.start(
            step=agent.cycle,
            step_name="agent cycle",
            enforce_staleness=agent.enforce_staleness,
            interval_s=settings.poll_interval_s,
            restore=lambda: agent.restore_everything(AGENT_ERROR),
        )
    return NodeAgentHandle(agent, server.port, server, loops)
