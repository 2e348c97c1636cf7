"""A GPU inference server (vLLM-like continuous batching) and a cluster of replicas behind a router.

Time advances in slots of ``step_s`` seconds (the engine's control granularity); inside a slot each
replica runs an exact event loop over its own arrivals, prefill completions and decode completions,
with the batch constant between events. Nothing iterates token by token:

* Decode: every running request gains one token per iteration, ``t(b)`` seconds at batch ``b`` (from
  ``gpumodel``). A request needing ``n`` more tokens finishes when the replica's cumulative iteration
  counter ``G`` (tokens generated per running sequence) reaches its admission value + ``n``: a heap
  ordered by that value gives the next completion in O(log b).
* Prefill: prompt tokens beyond ``amortised_prompt_tokens`` (the chat prompt already inside the
  throughput fit) are processed FIFO as chunked prefill: each iteration carries the decode batch and
  ``chunk_tokens - b`` prompt tokens at ``prefill_tokens_per_s`` (compute-bound: full power, slows with
  the clock). A request's first token comes when its prefill completes: its time to first token
  (TTFT) is its queueing (gateway, replica) plus its prefill, queued behind the prompts before it.
* Inter-token latency (ITL): each later token takes one iteration, ``t(b)`` plus the prefill chunk the
  iteration carries, so ITL grows with the batch and with other requests' prefills. Per request the
  log keeps its mean (decode time over output tokens after the first); per slot each replica counts
  its tokens per ITL histogram bucket, as vLLM's ``inter_token_latency_seconds`` observes them, and the
  ITL bucket of each finished request's mean, as its ``request_time_per_output_token_seconds`` does.
* Power: idle (model resident) with nothing running; otherwise the time-weighted mix of decode power
  ``P(b)`` and prefill power, both at the clock the cap/lock allows.
* Admission: at most ``max_batch`` requests in prefill + decode; the rest wait in the replica's queue.
* Cold start: a new replica draws idle power for ``cold_start_s`` and serves nothing.
* Router: arrivals go to the ready, non-draining replica with the fewest requests (running + queued);
  with none ready they wait at the gateway. Scale-down removes starting replicas first, then drains the
  least-loaded ready ones (no new requests; they finish what they hold, then stop).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from gpumodel.model import ServerProfile, operating_point, prefill_point
from sim.observe import (
    LATENCY_BUCKETS_S,
    N_ITL_BUCKETS,
    N_TTFT_BUCKETS,
    bucket_index,
    itl_bucket_index,
    ttft_bucket_index,
)
from sim.trace import Request

_EPS = 1e-9


@dataclass(frozen=True)
class ServerConfig:
    profile: ServerProfile
    max_batch: int = 256
    """vLLM's ``max_num_seqs`` (its default)."""
    chunk_tokens: int = 2048
    """vLLM's ``max_num_batched_tokens`` with chunked prefill: tokens one iteration may carry."""
    amortised_prompt_tokens: int = 256
    """Prompt tokens per request already inside the throughput fit (short chat prompts)."""
    cold_start_s: float | None = None
    """None: the profile's figure."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if self.chunk_tokens <= self.max_batch:
            raise ValueError("chunk_tokens must exceed max_batch (each iteration carries the batch)")
        if self.amortised_prompt_tokens < 0:
            raise ValueError("amortised_prompt_tokens must be >= 0")

    @property
    def cold_start(self) -> float:
        return self.profile.cold_start_s if self.cold_start_s is None else self.cold_start_s

    def prefill_tokens(self, request: Request) -> float:
        # At least one token, so every request goes through the same first-token path.
        return float(max(1, request.prompt_tokens - self.amortised_prompt_tokens))


@dataclass
class RequestLog:
    """Per-request outcome, indexed like the trace (NaN until known)."""

    arrival_s: list[float]
    first_token_s: list[float] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        self.first_token_s = [math.nan] * n
        self.end_s = [math.nan] * n


class _PointCache:
    """Memoised (iteration seconds, watts) per batch and (prefill tokens/s, watts), per cap/clock."""

    def __init__(self, profile: ServerProfile) -> None:
        self.profile = profile
        self._decode: dict[tuple[int, float | None, float | None], tuple[float, float]] = {}
        self._prefill: dict[tuple[float | None, float | None], tuple[float, float]] = {}

    def decode(self, batch: int, cap: float | None, clock: float | None) -> tuple[float, float]:
        key = (batch, cap, clock)
        hit = self._decode.get(key)
        if hit is None:
            op = operating_point(self.profile, batch, power_cap_w=cap, locked_clock_mhz=clock)
            hit = self._decode[key] = (op.iteration_time_s, op.power_w)
        return hit

    def prefill(self, cap: float | None, clock: float | None) -> tuple[float, float]:
        key = (cap, clock)
        hit = self._prefill.get(key)
        if hit is None:
            pp = prefill_point(self.profile, power_cap_w=cap, locked_clock_mhz=clock)
            hit = self._prefill[key] = (pp.tokens_per_s, pp.power_w)
        return hit


class Replica:
    """One inference server. ``advance(t0, t1)`` runs it over a slot; it never looks at other replicas."""

    def __init__(
        self, rid: int, config: ServerConfig, created_s: float, ready_s: float, points: _PointCache
    ) -> None:
        self.id = rid
        self.config = config
        self.created_s = created_s
        self.ready_s = ready_s
        self.draining = False
        self.power_cap_w: float | None = None
        self.locked_clock_mhz: float | None = None
        self.energy_j = 0.0
        self.idle_energy_j = 0.0
        self._points = points
        self._g = 0.0  # decode iterations so far (tokens per running sequence)
        self._decoding: list[tuple[float, int]] = []  # heap of (G at which it finishes, request)
        self._prefill: deque[list[float]] = deque()  # [request, prompt tokens left], FIFO
        self._waiting: deque[int] = deque()  # admitted to the replica, not yet to the batch
        self._incoming: deque[tuple[float, int]] = deque()  # (available at, request), this slot
        # Completions this slot, for the metrics: (end_s, latency_s, bucket index), and which requests
        # they were (the demo's simulated inference servers count their tokens).
        self.finished: list[tuple[float, float, int]] = []
        self.finished_ids: list[int] = []
        # This slot's first tokens (TTFT bucket of each) and output tokens per ITL bucket.
        self.first_token_buckets: list[int] = []
        self.itl_tokens: list[float] = [0.0] * N_ITL_BUCKETS
        self._itl_seen = False
        # Prompt and generated tokens processed this slot (vLLM's prompt/generation token counters).
        self.slot_tokens = 0.0
        # What the replica's own /metrics would show, cumulative since it started (the governor's
        # scrape): TTFT and ITL bucket counts and the ITL histogram's sum (seconds over tokens).
        self.ttft_counts_total: list[float] = [0.0] * N_TTFT_BUCKETS
        self.itl_counts_total: list[float] = [0.0] * N_ITL_BUCKETS
        self.itl_sum_s = 0.0
        # The TTFT histogram's sum and vLLM's prompt-token counter (counted at the first token, as vLLM
        # does), folded into the totals with the TTFT buckets at the slot's end.
        self.ttft_sum_s = 0.0
        self.prompt_tokens_total = 0.0
        self._slot_ttft_s = 0.0
        self._slot_prompt_tokens = 0.0

    def is_ready(self, now_s: float) -> bool:
        return now_s >= self.ready_s - _EPS

    @property
    def load(self) -> int:
        return len(self._decoding) + len(self._prefill) + len(self._waiting) + len(self._incoming)

    @property
    def batch(self) -> int:
        return len(self._decoding)

    @property
    def not_started(self) -> int:
        """Requests whose prefill has not started: behind the prefill in progress (chunked prefill serves
        one prompt at a time here; vLLM V1 would keep them waiting for token budget), or not yet in
        the batch. The workload-level waiting gauge of the Prometheus view (``SlotOutcome.waiting``)."""
        return max(0, len(self._prefill) - 1) + len(self._waiting) + len(self._incoming)

    @property
    def running(self) -> int:
        """Requests in the batch (prefill or decode): vLLM's ``num_requests_running``."""
        return len(self._decoding) + len(self._prefill)

    @property
    def waiting(self) -> int:
        """Requests admitted to the replica but not to its batch: vLLM's ``num_requests_waiting``."""
        return len(self._waiting)

    def assign(self, request: int, available_s: float) -> None:
        self._incoming.append((available_s, request))

    def advance(self, t0: float, t1: float, requests: tuple[Request, ...], log: RequestLog) -> None:
        """Run from ``t0`` to ``t1``, serving what was assigned and recording outcomes in ``log``."""
        profile = self.config.profile
        idle_w = profile.idle_power_w
        if t0 < self.ready_s:
            cold = min(t1, self.ready_s) - t0
            self.energy_j += idle_w * cold
            self.idle_energy_j += idle_w * cold
            t0 = min(t1, self.ready_s)
            if t0 >= t1:
                return
        cap, clock = self.power_cap_w, self.locked_clock_mhz
        pre_rate_full, pre_power = self._points.prefill(cap, clock)
        chunk = self.config.chunk_tokens
        max_batch = self.config.max_batch
        decoding, prefill, waiting, incoming = self._decoding, self._prefill, self._waiting, self._incoming
        arrivals = log.arrival_s
        t = t0
        while True:
            while incoming and incoming[0][0] <= t + _EPS:
                _, req = incoming.popleft()
                if len(decoding) + len(prefill) < max_batch:
                    prefill.append([req, self.config.prefill_tokens(requests[req])])
                else:
                    waiting.append(req)
            horizon = min(t1, incoming[0][0]) if incoming else t1
            b = len(decoding)
            if b == 0 and not prefill:
                span = horizon - t
                self.energy_j += idle_w * span
                self.idle_energy_j += idle_w * span
                t = horizon
                if t >= t1 - _EPS:
                    break
                continue
            if b:
                t_dec, p_dec = self._points.decode(b, cap, clock)
            else:
                t_dec, p_dec = 0.0, 0.0
            if prefill:
                c = chunk - b
                t_pre = c / pre_rate_full
                tau = t_dec + t_pre
                power = (t_dec * p_dec + t_pre * pre_power) / tau
                pre_rate = c / tau
                dt_pre = prefill[0][1] / pre_rate
            else:
                tau, power, pre_rate, dt_pre = t_dec, p_dec, 0.0, math.inf
            dt_dec = (decoding[0][0] - self._g) * tau if b else math.inf
            dt = max(0.0, min(horizon - t, dt_pre, dt_dec))
            self.energy_j += power * dt
            if b:
                self._g += dt / tau
                if dt > 0:
                    self.itl_tokens[itl_bucket_index(tau)] += b * dt / tau
                    self.itl_sum_s += b * dt
                    self._itl_seen = True
            t += dt
            if prefill:
                head = prefill[0]
                head[1] -= dt * pre_rate
                if head[1] <= _EPS or dt == dt_pre:
                    prefill.popleft()
                    req = int(head[0])
                    log.first_token_s[req] = t
                    self.first_token_buckets.append(ttft_bucket_index(t - arrivals[req]))
                    self._slot_ttft_s += t - arrivals[req]
                    self._slot_prompt_tokens += requests[req].prompt_tokens
                    self.slot_tokens += requests[req].prompt_tokens + 1
                    left = requests[req].output_tokens - 1
                    if left > 0:
                        heapq.heappush(decoding, (self._g + left, req))
                    else:
                        self._finish(req, t, arrivals, log)
            while decoding and decoding[0][0] <= self._g + _EPS:
                _, req = heapq.heappop(decoding)
                self._finish(req, t, arrivals, log)
            while waiting and len(decoding) + len(prefill) < max_batch:
                req = waiting.popleft()
                prefill.append([req, self.config.prefill_tokens(requests[req])])
            if t >= t1 - _EPS and not (incoming and incoming[0][0] <= t + _EPS):
                break

    def take_slot_tokens(self) -> tuple[list[int], list[float] | None]:
        """This slot's TTFT buckets and ITL token counts (None when no token was decoded); resets both."""
        firsts, self.first_token_buckets = self.first_token_buckets, []
        for bucket in firsts:
            self.ttft_counts_total[bucket] += 1
        self.ttft_sum_s += self._slot_ttft_s
        self.prompt_tokens_total += self._slot_prompt_tokens
        self._slot_ttft_s = self._slot_prompt_tokens = 0.0
        if not self._itl_seen:
            return firsts, None
        itl, self.itl_tokens, self._itl_seen = self.itl_tokens, [0.0] * N_ITL_BUCKETS, False
        for i, tokens in enumerate(itl):
            self.itl_counts_total[i] += tokens
        return firsts, itl

    def _finish(self, req: int, t: float, arrivals: list[float], log: RequestLog) -> None:
        log.end_s[req] = t
        latency = t - arrivals[req]
        self.finished.append((t, latency, bucket_index(latency)))
        self.finished_ids.append(req)


@dataclass
class SlotOutcome:
    """What one slot produced, for the metrics and the time series."""

    finished: list[tuple[float, float, int]]
    per_replica: dict[int, list[tuple[float, float, int]]]
    energy_j: float
    arrivals: int
    finished_ids: dict[int, list[int]] = field(default_factory=dict)
    """Per replica, the trace indices of the requests in ``per_replica`` (same order)."""
    first_token_buckets: list[int] = field(default_factory=list)
    """TTFT bucket (``sim.observe.TTFT_BUCKETS_S``) of each first token in the slot, all replicas."""
    itl_tokens: list[float] | None = None
    """Output tokens per ITL bucket (``sim.observe.ITL_BUCKETS_S``) in the slot; None when none."""
    tokens: float = 0.0
    """Prompt and generated tokens processed in the slot, all replicas."""
    waiting: int = 0
    """At the slot's end: requests whose prefill has not started (gateway and replicas)."""
    running: int = 0
    """At the slot's end: requests decoding or in prefill."""
    request_itl_buckets: list[int] = field(default_factory=list)
    """ITL bucket of each finished request's mean time per output token (0 s for one token), all
    replicas."""


class Cluster:
    """Replicas of one workload, the router in front of them and the gateway queue."""

    def __init__(self, config: ServerConfig, requests: tuple[Request, ...]) -> None:
        self.config = config
        self.requests = requests
        self.log = RequestLog([r.arrival_s for r in requests])
        self.replicas: list[Replica] = []
        self.replica_seconds = 0.0
        self.cold_starts = 0
        self.energy_j = 0.0
        self.idle_energy_j = 0.0
        self._points = _PointCache(config.profile)
        self._next_id = 0
        self._next_arrival = 0
        self._gateway: deque[int] = deque()

    # -- scaling -------------------------------------------------------------------------------------
    def active(self) -> list[Replica]:
        """Replicas that count towards the desired number (starting or ready, not draining)."""
        return [r for r in self.replicas if not r.draining]

    def ready_count(self, now_s: float) -> int:
        """Pods reporting metrics: ready ones, draining included (they still serve)."""
        return sum(1 for r in self.replicas if r.is_ready(now_s))

    def scale_to(self, replicas: int, now_s: float, warm: bool = False) -> None:
        """Start or stop replicas so ``replicas`` are starting or ready. ``warm``: new ones are ready at
        once (the offline optimum starts them a cold start ahead; the engine charges that time)."""
        active = self.active()
        for _ in range(replicas - len(active)):
            ready = now_s if warm else now_s + self.config.cold_start
            self.replicas.append(Replica(self._next_id, self.config, now_s, ready, self._points))
            self._next_id += 1
            self.cold_starts += 1
        surplus = len(active) - replicas
        if surplus <= 0:
            return
        # Kubernetes deletes not-ready pods first; among ready ones we drain the least loaded.
        victims = sorted(active, key=lambda r: (r.is_ready(now_s), r.load))[:surplus]
        for r in victims:
            if not r.is_ready(now_s):
                self.replicas.remove(r)
                self.replica_seconds += now_s - r.created_s
            else:
                r.draining = True

    # -- running -------------------------------------------------------------------------------------
    def step(self, t0: float, t1: float) -> SlotOutcome:
        """Route the arrivals of [t0, t1) and run every replica over the slot."""
        ready = [r for r in self.replicas if r.is_ready(t0) and not r.draining]
        requests = self.requests
        arrivals = 0
        while self._next_arrival < len(requests) and requests[self._next_arrival].arrival_s < t1:
            self._gateway.append(self._next_arrival)
            self._next_arrival += 1
            arrivals += 1
        if ready:
            loads = [r.load for r in ready]
            while self._gateway:
                req = self._gateway.popleft()
                i = loads.index(min(loads))
                loads[i] += 1
                ready[i].assign(req, max(requests[req].arrival_s, t0))
        energy = 0.0
        finished: list[tuple[float, float, int]] = []
        per_replica: dict[int, list[tuple[float, float, int]]] = {}
        finished_ids: dict[int, list[int]] = {}
        first_tokens: list[int] = []
        itl: list[float] | None = None
        tokens = 0.0
        for r in self.replicas:
            before, idle_before = r.energy_j, r.idle_energy_j
            r.advance(t0, t1, requests, self.log)
            energy += r.energy_j - before
            self.idle_energy_j += r.idle_energy_j - idle_before
            firsts, slot_itl = r.take_slot_tokens()
            first_tokens.extend(firsts)
            if slot_itl is not None:
                itl = slot_itl if itl is None else [a + b for a, b in zip(itl, slot_itl, strict=True)]
            tokens += r.slot_tokens
            r.slot_tokens = 0.0
            if r.finished:
                finished.extend(r.finished)
                per_replica[r.id] = r.finished
                finished_ids[r.id] = r.finished_ids
                r.finished = []
                r.finished_ids = []
        for r in [r for r in self.replicas if r.draining and r.load == 0]:
            self.replicas.remove(r)
            self.replica_seconds += t1 - r.created_s
        self.energy_j += energy
        waiting = len(self._gateway) + sum(r.not_started for r in self.replicas)
        running = sum(r.load - r.not_started for r in self.replicas)
        request_itl = [self._mean_itl_bucket(req) for ids in finished_ids.values() for req in ids]
        return SlotOutcome(finished, per_replica, energy, arrivals, finished_ids, first_tokens, itl, tokens,
                           waiting, running, request_itl)  # fmt: skip

    def _mean_itl_bucket(self, req: int) -> int:
        """The ITL bucket of a finished request's mean time per output token after the first (vLLM
        observes 0 for a request of one token)."""
        n = self.requests[req].output_tokens
        decode_s = self.log.end_s[req] - self.log.first_token_s[req]
        return itl_bucket_index(decode_s / (n - 1) if n > 1 else 0.0)

    @property
    def pending(self) -> int:
        """Requests not finished yet (gateway, queues, batches) plus those not yet arrived."""
        return (
            len(self._gateway) + sum(r.load for r in self.replicas) + len(self.requests) - self._next_arrival
        )

    def close(self, now_s: float) -> None:
        """Account the replicas still running at the end."""
        for r in self.replicas:
            self.replica_seconds += now_s - r.created_s
        self.replicas = []


__all__ = ["LATENCY_BUCKETS_S", "Cluster", "Replica", "RequestLog", "ServerConfig", "SlotOutcome"]
