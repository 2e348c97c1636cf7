"""Per-pod energy, request and token accounting from periodic samples (pure; time comes in as numbers).

Attribution rules (stated in the metrics' HELP too):

* GPU energy. Every sample reads each board's monotonic energy counter. The growth since the previous
  sample goes to the pods holding the board at this sample (a MIG instance or time-slice replica
  counts toward its parent board). One holder gets all of it. Several holders split it by their share
  of the tokens (prompt + generation) processed in the interval, when every holder reported tokens
  and at least one token was processed; otherwise by static weight (MIG compute slices of the
  instance, time-slice replicas held, 1 per whole GPU). So the pod series of one board always sum to
  the board's counter over the intervals in which someone held it; energy of an unheld board is idle
  energy and belongs to no pod.
* CPU energy (optional). The node's CPU energy growth times the pod's share of the node's CPU time in
  the interval (cgroup v2 ``cpu.stat`` ``usage_usec``), for the GPU pods we track.
* Energy is accumulated per pod (namespace/name) from these deltas, so it stays monotonic when the pod
  moves to another GPU, when a GPU is handed to another pod, and when the pod's containers restart.
* Requests, tokens and latency histograms (end-to-end, TTFT, ITL) mirror the pod's inference server
  and survive its restarts and bad data (see ``counters``). The queue and saturation gauges (requests
  waiting, requests running, KV-cache usage) are the server's values of this read, not mirrors. All
  are published only for a pod whose server this sample read (and only the metrics that read had
  usable data for): a pod that could not be read has them omitted, never re-published frozen, and
  ``app_up`` False says why. The mirrors keep their state, so the series continue where they were
  when reads succeed again.
* ``app_up``: True when this sample read the pod's server, False when the read failed or missed its
  deadline (or the pod had a server to read and no longer has an address or port), None for a pod
  with nothing to read or that holds no GPU any more.
* Joules per request: the pod's energy growth divided by its requests growth between its last two
  successful reads of the inference server; absent when no request finished in between.
* A pod that no longer holds any GPU keeps its last values for ``grace_s`` seconds, then is dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.pods.appmetrics import AppReading, CounterSeries
from exporter.pods.counters import HistogramTotals, MirroredCounter, MirroredHistogram
from exporter.pods.devices import BoardShare

DEFAULT_GRACE_S = 300.0


@dataclass(frozen=True, order=True)
class PodKey:
    namespace: str
    pod: str


@dataclass(frozen=True)
class Holding:
    """One container holding one device (the kubelet's view)."""

    pod: PodKey
    container: str
    share: BoardShare


@dataclass(frozen=True)
class Tick:
    """One sample: everything read at (nearly) the same instant ``now_s``."""

    now_s: float
    holdings: Sequence[Holding]
    gpu_energy_j: Mapping[str, float]
    # Pods whose inference server was read in this sample: the reading, or None when the read failed
    # (unreachable, timed out, malformed). Pods without a server to read are absent.
    app: Mapping[PodKey, AppReading | None] = field(default_factory=dict)
    # Workload (top owner) names known so far; a pod is published once its workload is known.
    workloads: Mapping[PodKey, str] = field(default_factory=dict)
    cpu_energy_j: float | None = None
    cpu_usage_s: Mapping[PodKey, float] = field(default_factory=dict)
    cpu_total_s: float | None = None


@dataclass(frozen=True)
class PodView:
    key: PodKey
    workload: str
    gpu_energy_j: float
    cpu_energy_j: float | None
    holdings: tuple[Holding, ...]
    requests: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    latency: HistogramTotals | None
    ttft: HistogramTotals | None
    joules_per_request: float | None
    app_up: bool | None  # None: nothing to read / holds no GPU; False: this sample's read failed
    itl: HistogramTotals | None = None
    request_itl: HistogramTotals | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    kv_cache_usage: float | None = None


class _PodState:
    def __init__(self) -> None:
        self.gpu_energy_j = 0.0
        self.cpu_energy_j: float | None = None
        self.workload: str | None = None
        self.holdings: tuple[Holding, ...] = ()
        self.last_held_s = 0.0
        self.requests = MirroredCounter()
        self.prompt = MirroredCounter()
        self.generation = MirroredCounter()
        self.latency = MirroredHistogram()
        self.ttft = MirroredHistogram()
        self.itl = MirroredHistogram()
        self.request_itl = MirroredHistogram()
        # The gauges of this sample's read (None when the pod was not read in it): published as read.
        self.waiting: float | None = None
        self.running: float | None = None
        self.kv_cache_usage: float | None = None
        # Which mirrors this sample's read fed with usable data: only those are published.
        self.fresh: frozenset[str] = frozenset()
        self.window: tuple[float, float] | None = None  # (energy, requests) at the last good read
        self.joules_per_request: float | None = None
        self.app_up: bool | None = None
        self.last_cpu_usage_s: float | None = None

    @property
    def energy_j(self) -> float:
        return self.gpu_energy_j + (self.cpu_energy_j or 0.0)


def _growth(counter: MirroredCounter, series: CounterSeries | None) -> float | None:
    return None if series is None else counter.update(series)


def split_weights(
    holders: Sequence[PodKey], tokens: Mapping[PodKey, float | None], static: Mapping[PodKey, float]
) -> dict[PodKey, float]:
    """Each holder's share of one board's energy growth (shares sum to 1)."""
    if len(holders) == 1:
        return {holders[0]: 1.0}
    token_values = [tokens.get(p) for p in holders]
    if all(v is not None for v in token_values):
        total = sum(v for v in token_values if v is not None)
        if total > 0:
            return {p: (tokens[p] or 0.0) / total for p in holders}
    weight_total = sum(static[p] for p in holders)
    return {p: static[p] / weight_total for p in holders}


class Accountant:
    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        if grace_s < 0:
            raise ValueError(f"grace period must be >= 0 s, got {grace_s}")
        self._grace_s = grace_s
        self._pods: dict[PodKey, _PodState] = {}
        self._board_energy_j: dict[str, float] = {}
        self._cpu_last: tuple[float, float] | None = None  # (energy J, node cpu seconds)

    def step(self, tick: Tick) -> None:
        by_pod: dict[PodKey, list[Holding]] = defaultdict(list)
        for h in tick.holdings:
            by_pod[h.pod].append(h)
        for key, holdings in by_pod.items():
            state = self._pods.setdefault(key, _PodState())
            state.holdings = tuple(holdings)
            state.last_held_s = tick.now_s
        for key, workload in tick.workloads.items():
            if key in self._pods and workload:
                self._pods[key].workload = workload

        tokens = self._read_apps(tick, by_pod)
        self._attribute_gpu(tick, by_pod, tokens)
        self._attribute_cpu(tick, by_pod)
        self._close_windows(tick)
        self._expire(tick, by_pod)

    def _read_apps(self, tick: Tick, by_pod: Mapping[PodKey, list[Holding]]) -> dict[PodKey, float | None]:
        """Update mirrored counters; return each read pod's tokens processed since its previous read."""
        tokens: dict[PodKey, float | None] = {}
        for key, state in self._pods.items():
            state.fresh = frozenset()
            state.waiting = state.running = state.kv_cache_usage = None
            if key not in by_pod:
                state.app_up = None  # gone: nothing is expected of its server any more
                continue
            if key not in tick.app:
                # No address or port to read now: unreadable if it had a server, else nothing to read.
                state.app_up = False if state.app_up is not None else None
                continue
            reading = tick.app[key]
            if reading is None:
                # The read failed: the mirrors keep their state (unpublished) and no window closes.
                state.app_up = False
                continue
            state.app_up = True
            _growth(state.requests, reading.requests)
            prompt = _growth(state.prompt, reading.prompt_tokens)
            generation = _growth(state.generation, reading.generation_tokens)
            if reading.latency is not None:
                state.latency.update(reading.latency)
            if reading.ttft is not None:
                state.ttft.update(reading.ttft)
            if reading.itl is not None:
                state.itl.update(reading.itl)
            if reading.request_itl is not None:
                state.request_itl.update(reading.request_itl)
            state.waiting, state.running = reading.requests_waiting, reading.requests_running
            state.kv_cache_usage = reading.kv_cache_usage
            read = {
                "requests": reading.requests,
                "prompt": reading.prompt_tokens,
                "generation": reading.generation_tokens,
                "latency": reading.latency,
                "ttft": reading.ttft,
                "itl": reading.itl,
                "request_itl": reading.request_itl,
            }
            state.fresh = frozenset(name for name, value in read.items() if value is not None)
            if prompt is None and generation is None:
                tokens[key] = None
            else:
                tokens[key] = (prompt or 0.0) + (generation or 0.0)
        return tokens

    def _attribute_gpu(
        self, tick: Tick, by_pod: Mapping[PodKey, list[Holding]], tokens: Mapping[PodKey, float | None]
    ) -> None:
        holders: dict[str, dict[PodKey, float]] = defaultdict(lambda: defaultdict(float))
        for key, holdings in by_pod.items():
            for h in holdings:
                holders[h.share.board_uuid][key] += h.share.weight
        for board, energy_j in tick.gpu_energy_j.items():
            last = self._board_energy_j.get(board)
            self._board_energy_j[board] = energy_j
            if last is None or energy_j <= last or board not in holders:
                # First sight (baseline only), no growth, a counter that went back (its source
                # already keeps it monotonic, so this is a new source: rebaseline), or idle energy.
                continue
            delta_j = energy_j - last
            static = holders[board]
            pods = sorted(static)
            for key, share in split_weights(pods, tokens, static).items():
                self._pods[key].gpu_energy_j += delta_j * share

    def _attribute_cpu(self, tick: Tick, by_pod: Mapping[PodKey, list[Holding]]) -> None:
        if tick.cpu_energy_j is None or tick.cpu_total_s is None:
            return
        last = self._cpu_last
        self._cpu_last = (tick.cpu_energy_j, tick.cpu_total_s)
        energy_growth = tick.cpu_energy_j - last[0] if last else 0.0
        cpu_growth = tick.cpu_total_s - last[1] if last else 0.0
        for key in by_pod:
            state = self._pods[key]
            usage = tick.cpu_usage_s.get(key)
            if usage is None:
                continue
            previous, state.last_cpu_usage_s = state.last_cpu_usage_s, usage
            if state.cpu_energy_j is None:
                state.cpu_energy_j = 0.0
            if previous is None or energy_growth <= 0 or cpu_growth <= 0:
                continue
            # A restarted container's cgroup starts again at zero: its usage is the growth.
            pod_growth = usage - previous if usage >= previous else usage
            state.cpu_energy_j += energy_growth * min(pod_growth / cpu_growth, 1.0)

    def _close_windows(self, tick: Tick) -> None:
        for key, state in self._pods.items():
            if tick.app.get(key) is None or "requests" not in state.fresh:
                state.joules_per_request = None
                continue
            now = (state.energy_j, state.requests.total)
            before, state.window = state.window, now
            state.joules_per_request = None
            if before is not None and now[1] > before[1]:
                state.joules_per_request = (now[0] - before[0]) / (now[1] - before[1])

    def _expire(self, tick: Tick, by_pod: Mapping[PodKey, list[Holding]]) -> None:
        for key in list(self._pods):
            if key in by_pod:
                continue
            state = self._pods[key]
            state.holdings = ()
            if tick.now_s - state.last_held_s > self._grace_s:
                del self._pods[key]

    def pods(self) -> list[PodView]:
        """Every pod with a known workload, sorted by namespace and name."""
        views = []
        for key in sorted(self._pods):
            s = self._pods[key]
            if s.workload is None:
                continue
            views.append(
                PodView(
                    key=key,
                    workload=s.workload,
                    gpu_energy_j=s.gpu_energy_j,
                    cpu_energy_j=s.cpu_energy_j,
                    holdings=s.holdings,
                    requests=s.requests.total if "requests" in s.fresh else None,
                    prompt_tokens=s.prompt.total if "prompt" in s.fresh else None,
                    generation_tokens=s.generation.total if "generation" in s.fresh else None,
                    latency=s.latency.totals if "latency" in s.fresh else None,
                    ttft=s.ttft.totals if "ttft" in s.fresh else None,
                    joules_per_request=s.joules_per_request,
                    app_up=s.app_up,
                    itl=s.itl.totals if "itl" in s.fresh else None,
                    request_itl=s.request_itl.totals if "request_itl" in s.fresh else None,
                    requests_waiting=s.waiting,
                    requests_running=s.running,
                    kv_cache_usage=s.kv_cache_usage,
                )
            )
        return views
