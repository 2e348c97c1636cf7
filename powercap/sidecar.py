"""The sidecar's control loop around the pure controller, and ``start_powercap``, its in-process factory.

Each tick: read latency and load, read the GPUs' temperatures, call ``controller.step``, put the decision
in force on every GPU still under control, publish metrics, count and report changes. With the clock
governor (``--control governor``, or a TTFT/ITL target) the tick also reads the inference server's
state (``powercap.serverstate``: batch, queue, KV use, TTFT and ITL histograms) and, for the cold-start
bridge, whether the workload is scaling up (``powercap.scaleup``), and calls ``governor.govern``
instead; its decisions go through the same put-in-force path. All of a tick's reads together are
bounded by one interval: a read that finds no time left is skipped, which the governor takes as no
data (the ceiling, never a lower clock). A power budget (``--power-budget-watts``) rides alongside the
clocks under the same rules: applied while controlling, restored with them. Whatever fails,
the GPU goes back to how the sidecar found it: stale metrics restore it (the controller decides that),
an NVML error restores it (here), and stopping restores it (``stop``).

Restoring never waits on the control loop. A latency read is bounded by its source's deadline, but even
a read that never returned could not hold a restore back: a watchdog thread restores once the last
usable reading is older than stale-after, and stop restores at once, both under a write lock that no
read holds; a tick that finishes its read after a stop writes nothing (docs/powercap.md, "Restore rules").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prometheus_client import CollectorRegistry, Gauge

from common import daemon
from common.daemon import GuardedLoops, serve_or_refuse, write_lock_or_not
from common.metrics_server import MetricsServerHandle
from devices.base import GpuDevice, GpuError
from gpumodel.model import H100_LLAMA_8B
from powercap.controller import CapDecision, ControllerConfig, Reading, initial_state, step
from powercap.events import CapEvent, EventSink, NullEventSink
from powercap.governor import (
    REASON_BRIDGE,
    REASON_PROMPT_FROZEN,
    REASON_PROMPT_UNUSABLE,
    REASON_QUEUE,
    REASON_STATE_FROZEN,
    REASON_STATE_UNUSABLE,
    GovernorConfig,
    GovernorReading,
    GovernorState,
    govern,
)
from powercap.gpu import ControlledGpu, open_gpus
from powercap.latency import LatencySource, LatencySourceError
from powercap.metrics import PowercapMetrics
from powercap.persist import StateStore
from powercap.prefill import PrefillProfile
from powercap.profile import IterationProfile, prior_of
from powercap.scaleup import ScaleUpError, ScaleUpSource
from powercap.serverstate import ServerSample, ServerStateError, ServerStateSource
from powercap.settings import GpuRange, Settings, StartupRefused, controller_config, governor_config

log = logging.getLogger(__name__)

_WARNING_REASONS = {"slo_breach", "thermal", "stale_metrics"}
# A tick that finished its latency read after stop began: it decides nothing and writes nothing.
REASON_STOPPING = "stopping"

SHUTDOWN_BUDGET_S = daemon.SHUTDOWN_BUDGET_S
"""``PowercapHandle.stop`` (SIGTERM) restores and returns within this, whatever the loop is doing."""

MIN_READ_S = 0.05
"""A read with less of the interval left than this is skipped (its data counts as missing)."""
# The governor's conditions worth one log line when they begin and end (not one per tick).
_CONDITIONS = {
    REASON_BRIDGE: "the workload is scaling up (desired replicas above ready ones): every replica at "
    "its ceiling until the new ones serve",
    REASON_STATE_UNUSABLE: "the server's state (batch, queue, KV) is missing or not a number: at the "
    "ceiling until it reads again",
    REASON_STATE_FROZEN: "the server's gauges have not moved while requests run (frozen?): at the ceiling",
    REASON_QUEUE: "requests are waiting (or the KV cache is nearly full): at the ceiling",
    REASON_PROMPT_UNUSABLE: "the server's prompt-token counter is missing or not a number (or this is the "
    "first scrape): at the ceiling until a rate reads",
    REASON_PROMPT_FROZEN: "first tokens came but the prompt-token counter did not move (frozen?): at the "
    "ceiling",
}


class SidecarParts(TypedDict, total=False):
    """What a test, a bench or the demo may put in place of the defaults: the clocks, the Event sink
    (default: none), a private registry, the pod's name (``namespace/name``, written in the state
    file), and the governor's server-state and scale-up sources (default: built from the settings)."""

    clock: Callable[[], float]
    events: EventSink | None
    registry: CollectorRegistry | None
    pod: str
    wall_clock: Callable[[], float]
    server_state: ServerStateSource | None
    scale_up: ScaleUpSource | None


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        devices: Sequence[GpuDevice],
        source: LatencySource,
        **parts: Unpack[SidecarParts],
    ) -> None:
        if not devices:
            raise StartupRefused(
                "no GPU visible to the sidecar: give it the pod's GPUs "
                "(NVIDIA_VISIBLE_DEVICES or --gpu-uuids)"
            )
        self.settings = settings
        self._source = source
        clock = parts.get("clock", time.monotonic)
        self._clock = clock
        # The request's timestamp is wall-clock time: the node agent runs on the same node, so it can
        # tell a live request from a replayed or frozen one by comparing it with its own clock.
        self._wall_clock = parts.get("wall_clock", time.time)
        self.events: EventSink = parts.get("events") or NullEventSink()
        # Through the node agent this process writes nothing to the GPU: no lock, no state file, no
        # permission check; it only reads the GPU (no privilege needed) and publishes its request.
        self._sets_nothing = settings.sets_nothing
        self._publishes_request = settings.via_agent and not settings.dry_run
        self.metrics = PowercapMetrics(
            parts.get("registry") or CollectorRegistry(),
            requests=self._publishes_request,
            governor=settings.governs,
        )
        store = StateStore(settings.state_dir)
        self.gpus: list[ControlledGpu] = open_gpus(
            devices,
            settings.actuator,
            store,
            settings.locks,
            parts.get("pod", ""),
            self._sets_nothing,
            original_from_default=settings.via_agent,
        )
        try:
            self.config, original = self._controller_config()
        except (StartupRefused, ValueError):
            self._unlock()
            raise
        self.state = initial_state(original, self.config)
        self.governor: GovernorConfig | None = None
        self.governor_state: GovernorState | None = None
        self._server_state: ServerStateSource | None = None
        self._scale_up: ScaleUpSource | None = None
        if settings.governs:
            try:
                self._start_governor(parts.get("server_state"), parts.get("scale_up"))
            except (StartupRefused, ValueError) as exc:
                self._unlock()
                raise StartupRefused(f"the clock governor cannot start: {exc}") from exc
        self._budget_w = settings.power_budget_w
        self._condition: str | None = None
        self._state_signal: str | None = None
        self._scale_up_signal: str | None = None
        self._scaling_up: bool | None = None
        self.last_decision: CapDecision | None = None
        self._started_s = clock()
        self._last_usable_s: float | None = None
        self._last_tick_s: float | None = None
        self._signal: str | None = None
        # Two locks so that restoring never waits on a latency read: the tick lock keeps ticks one at a
        # time (and is held across the read); the write lock guards the controller state and every GPU
        # write, and is never held across a read. Stop and the staleness watchdog take only the latter.
        self._tick_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stopping = False
        self._publish_static()
        for g in self.gpus:
            if g.recovered:
                self._restored(g, "crash_recovery")

    def _controller_config(self) -> tuple[ControllerConfig, float]:
        """(config, original setting): the settings' bounds within what every controlled GPU allows,
        starting from the lowest original (the same limit goes on each of the pod's GPUs)."""
        if self.settings.actuator == "power":
            gpus = GpuRange(
                low=max(g.limit_range_w[0] for g in self.gpus),
                high=min(g.limit_range_w[1] for g in self.gpus),
                original=min(g.original_w for g in self.gpus),
            )
        else:
            high = min(g.clock_range_mhz[1] for g in self.gpus)
            gpus = GpuRange(low=max(g.clock_range_mhz[0] for g in self.gpus), high=high, original=high)
        return controller_config(self.settings, gpus), gpus.original

    def _start_governor(self, server_state: ServerStateSource | None, scale_up: ScaleUpSource | None) -> None:
        """The governor's config (the GPUs' settable clocks within the bounds), its profile (gpumodel's
        calibrated prior at this GPU's top clock, learned online), its state reader and bridge source."""
        s = self.settings
        low = max(g.clock_range_mhz[0] for g in self.gpus)
        high = min(g.clock_range_mhz[1] for g in self.gpus)
        common = set.intersection(*(set(g.clocks_mhz) for g in self.gpus))
        clocks = tuple(sorted(float(c) for c in common if low <= c <= high)) or (high,)
        self.governor = governor_config(s, GpuRange(low=low, high=high, original=high), clocks)
        ctrl = self.governor.controller
        prior = dataclasses.replace(prior_of(H100_LLAMA_8B), max_clock_mhz=high)
        profile = IterationProfile.start(prior, (ctrl.floor, ctrl.ceiling), H100_LLAMA_8B.max_batch)
        prefill = PrefillProfile.start(H100_LLAMA_8B.prefill_tokens_per_s, high)
        self.governor_state = GovernorState(self.state, profile, prefill=prefill)
        self._server_state = server_state or ServerStateSource(
            s.metrics_url, s.server, s.latency_window_s, s.scrape_deadline_s
        )
        query = s.scale_up_promql
        self._scale_up = scale_up
        if scale_up is None and query is not None:
            self._scale_up = ScaleUpSource(
                s.prometheus_url, query, s.prometheus_deadline_s, s.prometheus_bearer_token_file
            )
        if self._scale_up is None:
            log.info("no cold-start bridge: name the workload (--workload) or give --scale-up-query")

    def _publish_static(self) -> None:
        m = self.metrics
        m.dry_run.set(1.0 if self.settings.dry_run else 0.0)
        m.latency_target.set(self.settings.latency_target_s)
        if self.governor is not None:
            nan = math.nan
            m.ttft_target.set(self.governor.ttft_target_s if self.governor.ttft_target_s else nan)
            m.itl_target.set(self.governor.itl_target_s if self.governor.itl_target_s else nan)
            m.scaling_up.set(nan)
        for g in self.gpus:
            m.original_watts.labels(uuid=g.uuid).set(g.original_w)
            if self.config.actuator == "power":
                m.floor_watts.labels(uuid=g.uuid).set(self.config.floor)
                m.ceiling_watts.labels(uuid=g.uuid).set(self.config.ceiling)
            m.set_state(g.uuid, "dry_run" if self.settings.dry_run else "restored")

    # -- the loop ------------------------------------------------------------------------------------
    def tick(self) -> CapDecision:
        """One control step: read the latency (bounded by the source's deadline, holding no write lock),
        then decide and put the decision in force under the write lock, unless the sidecar is stopping."""
        with self._tick_lock:
            read_at = self._clock()
            started = time.monotonic()
            latency, load = self._read_latency(read_at)
            sample: ServerSample | None = None
            scaling_up: bool | None = None
            if self.governor is not None:
                # Every read of one tick together within one interval: what finds no time left is
                # skipped, and missing data only ever keeps the clock at its ceiling.
                sample = self._read_server_state(read_at, self._left(started))
                scaling_up = self._read_scale_up(self._left(started))
            with self._write_lock:
                if self._stopping:
                    # Restored while this tick was reading: a late decision must not cap the GPU again.
                    return CapDecision("hold", self.state.setpoint, REASON_STOPPING, self.state.setpoint)
                if latency is not None or _observed(sample):
                    self._last_usable_s = read_at
                now = self._clock()
                self._recover_errors(now)
                temps: list[float] = []
                slowdowns: list[float] = []
                powers: list[float] = []
                for g in self._active():
                    try:
                        temps.append(g.device.temperature_c())
                        slowdowns.append(g.device.slowdown_temperature_c())
                        powers.append(g.device.power_usage_mw() / 1000)
                    except GpuError as exc:
                        self._gpu_error(g, exc, now)
                reading = Reading(
                    now_s=now,
                    latency_s=latency,
                    age_s=self._age(now),
                    load_rps=load,
                    temperature_c=max(temps) if temps else None,
                    slowdown_temperature_c=min(slowdowns) if slowdowns else None,
                    power_w=max(powers) if powers else None,
                )
                governed = None
                if self.governor is not None:
                    governed = self._governor_reading(reading, latency, sample, scaling_up)
                decision = self._decide(reading, now, governed)
                self._last_tick_s = now
                return decision

    def _left(self, started: float) -> float:
        """What is left of this tick's interval for its next read."""
        return self.settings.interval_s - (time.monotonic() - started)

    def _governor_reading(
        self,
        reading: Reading,
        latency: float | None,
        sample: ServerSample | None,
        scaling_up: bool | None,
    ) -> GovernorReading:
        target = self.settings.latency_target_s
        return GovernorReading(
            now_s=reading.now_s,
            age_s=reading.age_s,
            itl_s=sample.itl_window_mean_s if sample is not None else None,
            ttft_buckets=sample.ttft_buckets if sample is not None else None,
            load=sample.load if sample is not None else None,
            itl_mean_s=sample.itl_interval_mean_s if sample is not None else None,
            ttft_interval_buckets=sample.ttft_interval_buckets if sample is not None else None,
            prompt=sample.prompt if sample is not None else None,
            interval_s=sample.interval_s if sample is not None else None,
            scaling_up=scaling_up,
            load_rps=reading.load_rps,
            temperature_c=reading.temperature_c,
            slowdown_temperature_c=reading.slowdown_temperature_c,
            e2e_ratio=latency / target if latency is not None else None,
        )

    def _read_server_state(self, now: float, left_s: float) -> ServerSample | None:
        """The server's state for the governor; None (logged once per change) when it cannot be read."""
        assert self._server_state is not None
        try:
            if left_s < MIN_READ_S:
                raise ServerStateError("no time left in this interval for the server-state read")
            sample = self._server_state.read(now, deadline_s=left_s)
        except ServerStateError as exc:
            if self._state_signal != "failing":
                log.warning("server state unreadable (the governor holds the ceiling): %s", exc)
            self._state_signal = "failing"
            return None
        if self._state_signal == "failing":
            log.info("server state readable again")
        self._state_signal = "ok"
        return sample

    def _read_scale_up(self, left_s: float) -> bool | None:
        """Is the workload scaling up? None (unknown: no bridge, logged once per change) on any error."""
        if self._scale_up is None:
            return None
        try:
            if left_s < MIN_READ_S:
                raise ScaleUpError("no time left in this interval for the scale-up query")
            answer = self._scale_up.read(deadline_s=left_s)
        except ScaleUpError as exc:
            answer, signal, detail = None, "failing", str(exc)
        else:
            signal = "unknown" if answer is None else "ok"
            detail = "no answer (no such workload, or its trigger is in advisory mode)"
        if signal not in (self._scale_up_signal, "ok"):
            log.warning(
                "cold-start bridge: %s (no bridge while it lasts; never a reason to lower clocks)", detail
            )
        if answer is not None and answer != self._scaling_up:
            # Said when it turns, whichever rule sets the clock meanwhile (a breach wins over it).
            log.info(
                "workload %s",
                "scaling up: the bridge holds the ceiling" if answer else "no longer scaling up",
            )
        if answer is not None:
            self._scaling_up = answer
        self._scale_up_signal = signal
        m = self.metrics.scaling_up
        m.set(math.nan if answer is None else 1.0 if answer else 0.0)
        return answer

    def enforce_staleness(self) -> CapDecision | None:
        """Restore now if the last usable reading is older than stale-after, whatever a tick is doing.

        The watchdog thread calls this every min(interval, ``daemon.WATCHDOG_MAX_PERIOD_S``); it takes
        only the write lock, which no latency read ever holds, so a source that trickles or hangs cannot
        delay the restore."""
        with self._write_lock:
            if self._stopping or self.state.mode == "restored":
                return None
            now = self._clock()
            age = self._age(now)
            if age <= self.config.stale_after_s:
                return None
            reading = Reading(now_s=now, latency_s=None, age_s=age)
            governed = None
            if self.governor is not None:
                governed = self._governor_reading(reading, None, None, None)
            return self._decide(reading, now, governed)

    def _age(self, now: float) -> float:
        """Seconds since the last usable reading (or since the start, before the first one)."""
        return now - (self._last_usable_s if self._last_usable_s is not None else self._started_s)

    def _decide(self, reading: Reading, now: float, governed: GovernorReading | None = None) -> CapDecision:
        """The controller's step (or the governor's), put in force and reported. Caller holds the write
        lock."""
        if self.governor is not None and self.governor_state is not None and governed is not None:
            self.governor_state, decision = govern(self.governor_state, governed, self.governor)
            self.state = self.governor_state.controller
            self._condition_changed(decision.reason)
        else:
            self.state, decision = step(self.state, reading, self.config)
        for g in self._active():
            self._put_in_force(g, decision, now)
        self._publish(decision, reading.latency_s)
        self.metrics.decisions.labels(reason=decision.reason).inc()
        if decision.changed:
            self._report(decision)
        self.last_decision = decision
        return decision

    def _condition_changed(self, reason: str) -> None:
        """One log line when a governor condition (the bridge, bad server state, a queue) begins or ends."""
        condition = reason if reason in _CONDITIONS else None
        if condition == self._condition:
            return
        if condition is not None:
            log.info("%s (%s)", _CONDITIONS[condition], condition)
        elif self._condition is not None:
            log.info("%s ended: the governor picks the clock from the server's state again", self._condition)
        self._condition = condition

    def _read_latency(self, now: float) -> tuple[float | None, float | None]:
        """(latency, load) of one read; latency None unless it is a usable number (it alone keeps the
        data fresh: an error, no finished request, NaN or a negative value all age it)."""
        try:
            sample = self._source.read(now)
        except LatencySourceError as exc:
            self._signal_changed(
                "failing", "latency source failing (the GPU is restored once the data is stale): %s", exc
            )
            return None, None
        latency = sample.latency_s
        load = sample.load_rps
        if load is not None and not (math.isfinite(load) and load >= 0):
            load = None
        if latency is None or not math.isfinite(latency) or latency < 0:
            self._signal_changed(
                "no_data",
                "no usable latency (no request finished in the window, or not a number): the GPU is "
                "restored once this lasts --stale-after-seconds (%gs)",
                self.config.stale_after_s,
            )
            return None, load
        self._signal_changed("ok", "latency source gives usable data again")
        return latency, load

    def _signal_changed(self, signal: str, message: str, *args: object) -> None:
        """Log the source's condition once per change, not once per tick. No finished request is info:
        an idle server is normal (and the first scrape never has a window yet)."""
        if signal == self._signal:
            return
        if signal != "ok" or self._signal is not None:
            (log.warning if signal == "failing" else log.info)(message, *args)
        self._signal = signal

    def _active(self) -> list[ControlledGpu]:
        return [g for g in self.gpus if g.status in ("controlling", "restored")]

    def _put_in_force(self, g: ControlledGpu, decision: CapDecision, now: float) -> None:
        if self._sets_nothing:
            return
        try:
            foreign = g.foreign_write(g.device.power_management_limit_mw())
            if foreign is not None:
                g.release(foreign)
                self.events.emit(
                    CapEvent(
                        "PowerCapForeignWrite",
                        f"GPU {g.uuid}: power limit set to {foreign / 1000:.0f} W by another writer; "
                        "eo-powercap stopped controlling this GPU",
                        warning=True,
                    )
                )
                return
            if decision.action == "restore":
                g.restore()
            elif self.state.mode == "controlling":
                g.apply(decision.setpoint, self.config.floor, self.config.ceiling)
                if self._budget_w is not None:
                    # The budget guard: the power limit held while the clocks move, restored with them.
                    g.apply_budget(self._budget_w)
        except GpuError as exc:
            self._gpu_error(g, exc, now)

    def _gpu_error(self, g: ControlledGpu, exc: GpuError, now: float) -> None:
        """An NVML error: restore the original (best effort, retried each tick) and pause this GPU."""
        log.error("GPU %s: %s; restoring its original setting and pausing control", g.uuid, exc)
        g.status = "error"
        g.error_since_s = now
        g.restore_pending = not self._sets_nothing and g.record.status == "controlling"
        message = f"GPU {g.uuid}: {exc}; restoring its original setting"
        self.events.emit(CapEvent("PowerCapError", message, warning=True))
        self._try_restore(g)

    def _try_restore(self, g: ControlledGpu) -> None:
        if not g.restore_pending:
            return
        try:
            g.restore()
        except GpuError as exc:
            log.error("GPU %s: restore failed (retried next tick): %s", g.uuid, exc)
            return
        self._restored(g, "gpu_error")

    def _restored(self, g: ControlledGpu, reason: str) -> None:
        """Count and report a restore the controller did not decide (crash recovery, error, shutdown)."""
        self.metrics.changes.labels(uuid=g.uuid, reason=reason).inc()
        self.events.emit(
            CapEvent(
                "PowerCapRestored",
                f"GPU {g.uuid}: original setting ({g.original_w:.0f} W, clocks unlocked) restored ({reason})",
                warning=reason != "shutdown",
            )
        )

    def _recover_errors(self, now: float) -> None:
        for g in self.gpus:
            if g.status != "error":
                continue
            self._try_restore(g)
            since = g.error_since_s if g.error_since_s is not None else now
            if not g.restore_pending and now - since >= self.settings.error_backoff_s:
                log.info("GPU %s: resuming control after the error back-off", g.uuid)
                g.status = "restored"
                g.error_since_s = None

    # -- reporting -----------------------------------------------------------------------------------
    def _publish(self, decision: CapDecision, latency: float | None) -> None:
        m = self.metrics
        # No usable latency is shown as NaN, never as the last number seen.
        m.latency.set(latency if latency is not None else math.nan)
        for g in self.gpus:
            self._set_setpoint(m.target_watts, m.target_clock, g, decision.setpoint)
            # A failing read was handled as an error this tick; the last value stays.
            with contextlib.suppress(GpuError):
                m.applied_watts.labels(uuid=g.uuid).set(g.device.power_limit_mw() / 1000)
            if self._sets_nothing:
                # Another writer (the node agent) may hold a clock lock NVML cannot read back.
                m.applied_clock.labels(uuid=g.uuid).set(g.device.max_sm_clock_mhz() * 1e6)
            else:
                applied_mhz = g.locked_max_mhz if g.locked_max_mhz is not None else g.clock_range_mhz[1]
                m.applied_clock.labels(uuid=g.uuid).set(applied_mhz * 1e6)
            m.set_state(g.uuid, self._state_name(g, decision))
        if self._publishes_request:
            self._publish_request(decision)

    def _publish_request(self, decision: CapDecision) -> None:
        """The request the node agent reads: the controller's setpoint on every GPU (a restore asks for
        the ceiling, which the agent takes as "no cap"), stamped with the time it was decided."""
        m = self.metrics
        for g in self.gpus:
            # Both actuators of one GPU in one request: the agent applies (or restores) both.
            self._set_setpoint(m.requested_watts, m.requested_clock, g, decision.setpoint)
        m.request_timestamp.set(self._wall_clock())

    def _set_setpoint(self, watts: Gauge, clock: Gauge, g: ControlledGpu, setpoint: float) -> None:
        """``setpoint`` on ``g``'s series of the actuator (W, or the clock in Hz), and beside the clocks
        the power limit of the budget guard, when there is one."""
        if self.config.actuator == "power":
            watts.labels(uuid=g.uuid).set(setpoint)
            return
        clock.labels(uuid=g.uuid).set(setpoint * 1e6)
        budget = self._budget_of(g)
        if budget is not None:
            watts.labels(uuid=g.uuid).set(budget)

    def _budget_of(self, g: ControlledGpu) -> float | None:
        """The power limit the budget guard wants on ``g`` now: the budget within the GPU's range and
        never above its original while controlling, the original once restored ("no cap"); None
        without a budget."""
        if self._budget_w is None:
            return None
        if self.state.mode == "restored":
            return g.original_w
        low, high = g.limit_range_w
        return min(max(self._budget_w, low), high, g.original_w)

    def _state_name(self, g: ControlledGpu, decision: CapDecision) -> str:
        if self.settings.dry_run:
            return "dry_run"
        if self.settings.via_agent:
            # The GPU is the agent's to write: the state is what this sidecar asks for.
            if self.state.mode == "restored":
                return "restored"
            return "controlling" if decision.action == "set" else "holding"
        if g.status in ("error", "released"):
            return "error"
        if self.state.mode == "restored" or (g.status == "restored" and decision.action != "set"):
            return "restored"
        return "controlling" if decision.action == "set" else "holding"

    def _report(self, d: CapDecision) -> None:
        what = "power limit" if self.config.actuator == "power" else "max SM clock"
        unit = "W" if self.config.actuator == "power" else "MHz"
        verb = "restored" if d.action == "restore" else "lowered" if d.setpoint < d.previous else "raised"
        prefix = (
            "dry-run: would have "
            if self.settings.dry_run
            else "asked the node agent to have "
            if self.settings.via_agent
            else ""
        )
        for g in self.gpus:
            if g.status in ("controlling", "restored") or self._sets_nothing:
                self.metrics.changes.labels(uuid=g.uuid, reason=d.reason).inc()
        message = (
            f"{prefix}{verb} {what} {d.previous:.0f} -> {d.setpoint:.0f} {unit} ({d.reason}); "
            f"GPUs {', '.join(g.uuid for g in self.gpus)}"
        )
        log.info(message)
        name = ("PowerCap" if self.config.actuator == "power" else "SmClockLimit") + verb.capitalize()
        if self.settings.dry_run:
            name += "DryRun"
        elif self.settings.via_agent:
            name += "Requested"
        self.events.emit(CapEvent(name, message, warning=d.reason in _WARNING_REASONS))

    def healthy(self) -> bool:
        last = self._last_tick_s if self._last_tick_s is not None else self._started_s
        return self._clock() - last <= 3 * self.settings.interval_s + 1.0

    def health(self) -> tuple[bool, str]:
        """``/healthz``: the control loop ticked within three intervals (plus a second)."""
        return (True, "ok\n") if self.healthy() else (False, "control loop stalled\n")

    # -- shutdown ------------------------------------------------------------------------------------
    def restore_all(self) -> bool:
        """Restore every GPU a setting of ours may still be on; True when all are restored.

        Takes the write lock, never the tick lock: a tick stuck in a latency read cannot delay it. If a
        GPU write holds the lock (an NVML call that does not return), it restores anyway after
        ``daemon.WRITE_LOCK_WAIT_S``."""
        with write_lock_or_not(self._write_lock, log):
            return self._restore_every_gpu()

    def _restore_every_gpu(self) -> bool:
        ok = True
        for g in self.gpus:
            if self._sets_nothing or g.record.status != "controlling":
                continue
            try:
                g.restore()
                self.metrics.set_state(g.uuid, "restored")
                self._restored(g, "shutdown")
                log.info("GPU %s: original setting restored", g.uuid)
            except GpuError as exc:
                ok = False
                log.error(
                    "GPU %s: restore failed (%s); its state file still says controlling, so the next "
                    "sidecar on this GPU restores it first",
                    g.uuid,
                    exc,
                )
        return ok

    def _unlock(self) -> None:
        for g in self.gpus:
            g.unlock()

    def close(self) -> bool:
        """Stop for good: no tick or watchdog writes anything after this; restore; release the locks."""
        # Set before the restore: a tick that takes the write lock after it sees the flag and writes
        # nothing, so a late tick cannot put a cap back after the restore.
        self._stopping = True
        ok = self.restore_all()
        self._unlock()
        return ok


@dataclass
class PowercapHandle:
    sidecar: Sidecar
    port: int
    _server: MetricsServerHandle
    _loops: GuardedLoops

    def stop(self) -> bool:
        """Restore every GPU, stop the loop, release the locks; True when every restore succeeded.

        Returns within ``SHUTDOWN_BUDGET_S`` whatever the loop is doing: the restore comes first and
        does not wait for a tick; the loop and watchdog threads are waited for briefly (they are daemons:
        one stuck in a latency read writes nothing more and ends with the process); queued Events get
        what is left of the budget."""
        return self._loops.shut_down(self.sidecar.close, self._server.stop, self.sidecar.events.close)


def start_powercap(
    settings: Settings,
    devices: Sequence[GpuDevice],
    latency_source: LatencySource,
    *,
    run_loop: bool = True,
    **parts: Unpack[SidecarParts],
) -> PowercapHandle:
    """Start the sidecar in-process. ``run_loop=False`` leaves ticking (and ``enforce_staleness``) to the
    caller (tests, simulators); otherwise a loop thread ticks every interval and a watchdog thread
    enforces staleness every min(interval, ``daemon.WATCHDOG_MAX_PERIOD_S``). With the governor, the
    server's state and the scale-up answer come from ``server_state`` and ``scale_up`` (default: built
    from the settings: ``--metrics-url``, ``--prometheus-url`` with ``--workload`` or
    ``--scale-up-query``)."""
    sidecar = Sidecar(settings, devices, latency_source, **parts)
    server = serve_or_refuse(
        sidecar.metrics.registry,
        sidecar.health,
        address=settings.listen_address,
        port=settings.port,
        name="eo-powercap",
        close=sidecar.close,
        refused=StartupRefused,
    )
    loops = GuardedLoops("eo-powercap", log)
    if run_loop:
        loops.start(
            step=sidecar.tick,
            step_name="control step",
            enforce_staleness=sidecar.enforce_staleness,
            interval_s=settings.interval_s,
            restore=sidecar.restore_all,
        )
    return PowercapHandle(sidecar, server.port, server, loops)


def _observed(sample: ServerSample | None) -> bool:
    """The server's histograms gave a latency this tick (a TTFT window or an ITL mean): fresh data."""
    return sample is not None and (sample.ttft_buckets is not None or sample.itl_window_mean_s is not None)
