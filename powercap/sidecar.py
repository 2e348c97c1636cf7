"""The sidecar's control loop around the pure controller, and ``start_powercap``, its in-process factory.

Each tick: read latency and load, read the GPUs' temperatures, call ``controller.step``, put the decision
in force on every GPU still under control, publish metrics, count and report changes. Whatever fails,
the GPU goes back to how the sidecar found it: stale metrics restore it (the controller decides that),
an NVML error restores it (here), and stopping restores it (``stop``).

Restoring never waits on the control loop. A latency read is bounded by its source's deadline, but even
a read that never returned could not hold a restore back: a watchdog thread restores once the last
usable reading is older than stale-after, and stop restores at once, both under a write lock that no
read holds; a tick that finishes its read after a stop writes nothing (docs/powercap.md, "Restore rules").
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from common.metrics_server import MetricsServerHandle, registry_renderer, serve_metrics
from devices.base import GpuDevice, GpuError
from powercap.controller import CapDecision, ControllerConfig, Reading, initial_state, step
from powercap.events import CapEvent, EventSink, NullEventSink
from powercap.gpu import ControlledGpu, open_gpus
from powercap.latency import LatencySource, LatencySourceError
from powercap.metrics import PowercapMetrics
from powercap.persist import StateStore
from powercap.settings import GpuRange, Settings, StartupRefused, controller_config

log = logging.getLogger(__name__)

_WARNING_REASONS = {"slo_breach", "thermal", "stale_metrics"}
# A tick that finished its latency read after stop began: it decides nothing and writes nothing.
REASON_STOPPING = "stopping"

SHUTDOWN_BUDGET_S = 5.0
"""``PowercapHandle.stop`` (SIGTERM) restores and returns within this, whatever the loop is doing."""
WRITE_LOCK_WAIT_S = 1.0
"""How long a restore waits for a GPU write in progress before restoring without it."""
WATCHDOG_MAX_PERIOD_S = 1.0
"""The staleness watchdog checks every min(interval, this): a restore comes at most that late."""
_LOOP_JOIN_S = 0.5


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        devices: Sequence[GpuDevice],
        source: LatencySource,
        clock: Callable[[], float] = time.monotonic,
        events: EventSink | None = None,
        registry: CollectorRegistry | None = None,
        pod: str = "",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not devices:
            raise StartupRefused(
                "no GPU visible to the sidecar: give it the pod's GPUs "
                "(NVIDIA_VISIBLE_DEVICES or --gpu-uuids)"
            )
        self.settings = settings
        self._source = source
        self._clock = clock
        # The request's timestamp is wall-clock time: the node agent runs on the same node, so it can
        # tell a live request from a replayed or frozen one by comparing it with its own clock.
        self._wall_clock = wall_clock
        self._events = events or NullEventSink()
        # Through the node agent this process writes nothing to the GPU: no lock, no state file, no
        # permission check; it only reads the GPU (no privilege needed) and publishes its request.
        self._sets_nothing = settings.sets_nothing
        self._publishes_request = settings.via_agent and not settings.dry_run
        self.metrics = PowercapMetrics(registry or CollectorRegistry(), requests=self._publishes_request)
        store = StateStore(settings.state_dir)
        self.gpus: list[ControlledGpu] = open_gpus(
            devices,
            settings.actuator,
            store,
            settings.locks,
            pod,
            self._sets_nothing,
            original_from_default=settings.via_agent,
        )
        try:
            self.config, original = self._controller_config()
        except (StartupRefused, ValueError):
            self._unlock()
            raise
        self.state = initial_state(original, self.config)
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

    def _publish_static(self) -> None:
        m = self.metrics
        m.dry_run.set(1.0 if self.settings.dry_run else 0.0)
        m.latency_target.set(self.settings.latency_target_s)
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
            latency, load = self._read_latency(read_at)
            with self._write_lock:
                if self._stopping:
                    # Restored while this tick was reading: a late decision must not cap the GPU again.
                    return CapDecision("hold", self.state.setpoint, REASON_STOPPING, self.state.setpoint)
                if latency is not None:
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
                decision = self._decide(reading, now)
                self._last_tick_s = now
                return decision

    def enforce_staleness(self) -> CapDecision | None:
        """Restore now if the last usable reading is older than stale-after, whatever a tick is doing.

        The watchdog thread calls this every min(interval, ``WATCHDOG_MAX_PERIOD_S``); it takes only the
        write lock, which no latency read ever holds, so a source that trickles or hangs cannot delay
        the restore."""
        with self._write_lock:
            if self._stopping or self.state.mode == "restored":
                return None
            now = self._clock()
            age = self._age(now)
            if age <= self.config.stale_after_s:
                return None
            return self._decide(Reading(now_s=now, latency_s=None, age_s=age), now)

    def _age(self, now: float) -> float:
        """Seconds since the last usable reading (or since the start, before the first one)."""
        return now - (self._last_usable_s if self._last_usable_s is not None else self._started_s)

    def _decide(self, reading: Reading, now: float) -> CapDecision:
        """The controller's step, put in force and reported. Caller holds the write lock."""
        self.state, decision = step(self.state, reading, self.config)
        for g in self._active():
            self._put_in_force(g, decision, now)
        self._publish(decision, reading.latency_s)
        if decision.changed:
            self._report(decision)
        self.last_decision = decision
        return decision

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
                self._events.emit(
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
        except GpuError as exc:
            self._gpu_error(g, exc, now)

    def _gpu_error(self, g: ControlledGpu, exc: GpuError, now: float) -> None:
        """An NVML error: restore the original (best effort, retried each tick) and pause this GPU."""
        log.error("GPU %s: %s; restoring its original setting and pausing control", g.uuid, exc)
        g.status = "error"
        g.error_since_s = now
        g.restore_pending = not self._sets_nothing and g.record.status == "controlling"
        message = f"GPU {g.uuid}: {exc}; restoring its original setting"
        self._events.emit(CapEvent("PowerCapError", message, warning=True))
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
        self._events.emit(
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
            if self.config.actuator == "power":
                m.target_watts.labels(uuid=g.uuid).set(decision.setpoint)
            else:
                m.target_clock.labels(uuid=g.uuid).set(decision.setpoint * 1e6)
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
            if self.config.actuator == "power":
                m.requested_watts.labels(uuid=g.uuid).set(decision.setpoint)
            else:
                m.requested_clock.labels(uuid=g.uuid).set(decision.setpoint * 1e6)
        m.request_timestamp.set(self._wall_clock())

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
        self._events.emit(CapEvent(name, message, warning=d.reason in _WARNING_REASONS))

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
        ``WRITE_LOCK_WAIT_S``."""
        acquired = self._write_lock.acquire(timeout=WRITE_LOCK_WAIT_S)
        if not acquired:
            log.error(
                "a GPU write did not finish within %gs; restoring without waiting for it", WRITE_LOCK_WAIT_S
            )
        try:
            return self._restore_every_gpu()
        finally:
            if acquired:
                self._write_lock.release()

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
    _events: EventSink
    _stop: threading.Event
    _threads: tuple[threading.Thread, ...] = ()

    def stop(self) -> bool:
        """Restore every GPU, stop the loop, release the locks; True when every restore succeeded.

        Returns within ``SHUTDOWN_BUDGET_S`` whatever the loop is doing: the restore comes first and
        does not wait for a tick; the loop and watchdog threads are waited for briefly (they are daemons:
        one stuck in a latency read writes nothing more and ends with the process); queued Events get
        what is left of the budget."""
        if self._stop.is_set():
            return True
        end = time.monotonic() + SHUTDOWN_BUDGET_S
        self._stop.set()
        ok = self.sidecar.close()
        for thread in self._threads:
            thread.join(max(0.0, min(_LOOP_JOIN_S, end - time.monotonic())))
            if thread.is_alive():
                log.warning("%s still busy (a latency read); it writes nothing more", thread.name)
        self._server.stop()
        self._events.close()
        return ok


def start_powercap(
    settings: Settings,
    devices: Sequence[GpuDevice],
    latency_source: LatencySource,
    *,
    clock: Callable[[], float] = time.monotonic,
    events: EventSink | None = None,
    registry: CollectorRegistry | None = None,
    pod: str = "",
    run_loop: bool = True,
    wall_clock: Callable[[], float] = time.time,
) -> PowercapHandle:
    """Start the sidecar in-process. ``run_loop=False`` leaves ticking (and ``enforce_staleness``) to the
    caller (tests, simulators); otherwise a loop thread ticks every interval and a watchdog thread
    enforces staleness every min(interval, ``WATCHDOG_MAX_PERIOD_S``)."""
    sink = events or NullEventSink()
    sidecar = Sidecar(settings, devices, latency_source, clock, sink, registry, pod, wall_clock)
    try:
        server = serve_metrics(
            registry_renderer(sidecar.metrics.registry),
            sidecar.health,
            address=settings.listen_address,
            port=settings.port,
            name="eo-powercap",
        )
    except OSError as exc:
        sidecar.close()
        raise StartupRefused(f"cannot listen on {settings.listen_address}:{settings.port}: {exc}") from exc
    stop = threading.Event()
    threads: tuple[threading.Thread, ...] = ()
    if run_loop:

        def guarded(action: Callable[[], object], what: str) -> None:
            try:
                action()
            except Exception:
                # A bug must not leave a GPU capped: restore, keep serving /metrics, try again.
                log.exception("%s failed; restoring every GPU", what)
                sidecar.restore_all()

        def loop() -> None:
            while not stop.is_set():
                guarded(sidecar.tick, "control step")
                stop.wait(settings.interval_s)

        def watchdog() -> None:
            period = min(settings.interval_s, WATCHDOG_MAX_PERIOD_S)
            while not stop.wait(period):
                guarded(sidecar.enforce_staleness, "staleness check")

        threads = (
            threading.Thread(target=loop, name="eo-powercap-loop", daemon=True),
            threading.Thread(target=watchdog, name="eo-powercap-watchdog", daemon=True),
        )
        for thread in threads:
            thread.start()
    return PowercapHandle(sidecar, server.port, server, sink, stop, threads)
