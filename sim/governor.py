"""The eo-powercap clock governor in eo-sim: the real ``powercap.governor.govern`` per replica.

Each replica's sidecar scrapes its own server (``sim.policies.ReplicaScrape``: the running and waiting
gauges, cumulative TTFT and ITL histograms, the ITL sum) and keeps a sliding window of those scrapes,
as the live sidecar does; from it, every interval, the configured quantile of TTFT and of ITL over the
window, the mean inter-token time since the previous scrape, and the prompt-token rate with the mean
TTFT since the previous scrape and over the window (the prompt feedforward, ``powercap.prefill``).
The workload's scaling state (the Deployment wanting more replicas than are ready) reaches it as
``scaling_up``: with the bridge on, every replica runs at its ceiling until the new ones serve;
``bridge=False`` is the ablation.

Optionally a power limit rides alongside (``budget_w``, per GPU): the budget actuator, held constant
while the clocks move for energy (docs/powercap.md, "Budget guard").
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

from common.settings import from_values
from gpumodel.model import ServerProfile
from powercap import settings as powercap_settings
from powercap.governor import (
    GovernorConfig,
    GovernorReading,
    GovernorState,
    PromptLoad,
    ServerLoad,
    govern,
    initial_governor_state,
)
from powercap.prefill import PrefillProfile
from powercap.profile import IterationProfile, prior_of
from powercap.settings import GpuRange, Settings
from sim.observe import TTFT_BUCKETS_S
from sim.policies import CapReading, CapSetting, ReplicaScrape

CLOCK_STEP_MHZ = 15


@dataclass(frozen=True)
class GovernorOptions:
    """The sidecar flags the simulator exposes for the governor."""

    itl_target_s: float | None
    ttft_target_s: float | None
    quantile: float = 0.99
    window_s: float = 60.0
    bridge: bool = True
    budget_w: float | None = None
    """A power limit per GPU held alongside the clocks (None: no budget actuator)."""


def sidecar_settings(options: GovernorOptions) -> Settings:
    """The sidecar's ``Settings`` in governor mode: clocks, the targets and quantile given (the whole
    target: ``--target-share`` keeps its default 1), ``Settings``' defaults for the rest."""
    values = {
        "latency_target_s": 1.0,  # required; the governor's controller judges latency/target ratios
        "actuator": "clocks",
        "ttft_target_s": options.ttft_target_s,
        "itl_target_s": options.itl_target_s,
        "target_quantile": options.quantile,
    }
    return from_values(Settings, values, environ={})


def governor_config(options: GovernorOptions, profile: ServerProfile) -> GovernorConfig:
    """The governor's config as the sidecar derives it (``powercap.settings.governor_config``): the
    clock bounds of ``Settings``' defaults within the GPU's range, the control law's tuning, the GPU's
    clocks every ``CLOCK_STEP_MHZ`` up to its maximum, targets as given."""
    low, high = float(profile.min_sm_clock_mhz), float(profile.max_sm_clock_mhz)
    clocks = tuple(
        float(c) for c in range(profile.min_sm_clock_mhz, profile.max_sm_clock_mhz + 1, CLOCK_STEP_MHZ)
    )
    if clocks[-1] != high:
        clocks = (*clocks, high)
    gpus = GpuRange(low=low, high=high, original=high)
    return powercap_settings.governor_config(sidecar_settings(options), gpus, clocks)


class _Replica:
    def __init__(self, state: GovernorState) -> None:
        self.state = state
        self.scrapes: deque[tuple[float, ReplicaScrape]] = deque()
        self.last_usable_s: float | None = None
        self.started_s = 0.0


def _delta(a: tuple[float, ...], b: tuple[float, ...]) -> list[float]:
    return [max(0.0, y - x) for x, y in zip(a, b, strict=True)]


def _prompt_load(
    oldest: ReplicaScrape,
    oldest_s: float,
    previous: ReplicaScrape,
    scrape: ReplicaScrape,
    now_s: float,
    interval_s: float,
) -> PromptLoad:
    return PromptLoad.from_counts(
        interval_s,
        scrape.prompt_tokens - previous.prompt_tokens,
        sum(scrape.ttft_counts) - sum(previous.ttft_counts),
        scrape.ttft_sum_s - previous.ttft_sum_s,
        now_s - oldest_s,
        scrape.prompt_tokens - oldest.prompt_tokens,
        sum(scrape.ttft_counts) - sum(oldest.ttft_counts),
    )


class EoGovernorController:
    """One eo-powercap sidecar in governor mode per replica (``sim.policies.CapController``)."""

    def __init__(self, options: GovernorOptions, profile: ServerProfile, name: str = "eo-governor") -> None:
        self.options = options
        self.config = governor_config(options, profile)
        self.interval_s = sidecar_settings(options).interval_s
        self.window_s = options.window_s
        self.quantile = options.quantile
        self.name = name
        self._model = profile
        self._replicas: dict[int, _Replica] = {}
        self.reasons: Counter[str] = Counter()
        """Decisions by reason, over every replica (the sidecar's eo_powercap_changes_total plus holds)."""

    def _setting(self, clock_mhz: float) -> CapSetting:
        budget = self.options.budget_w
        cap = budget * self._model.num_gpus if budget is not None else None
        locked = None if clock_mhz >= self.config.controller.ceiling else clock_mhz
        return CapSetting(power_cap_w=cap, locked_clock_mhz=locked)

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        profile = IterationProfile.start(
            prior_of(self._model),
            (self.config.controller.floor, self.config.controller.ceiling),
            self._model.max_batch,
        )
        prefill = PrefillProfile.start(self._model.prefill_tokens_per_s, float(self._model.max_sm_clock_mhz))
        replica = _Replica(initial_governor_state(self.config, profile, prefill))
        replica.started_s = now_s
        self._replicas[replica_id] = replica
        return self._setting(replica.state.controller.setpoint)

    def control(self, replica_id: int, reading: CapReading) -> CapSetting:
        replica = self._replicas[replica_id]
        now = reading.now_s
        scrape = reading.scrape
        itl = mean = None
        ttft: tuple[tuple[float, float], ...] | None = None
        recent: tuple[tuple[float, float], ...] | None = None
        load = None
        prompt = None
        interval = None
        if scrape is not None:
            history = replica.scrapes
            previous = history[-1][1] if history else None
            previous_s = history[-1][0] if history else now
            history.append((now, scrape))
            while len(history) > 1 and history[0][0] < now - self.window_s:
                history.popleft()
            oldest = history[0][1]
            counts = _delta(oldest.ttft_counts, scrape.ttft_counts)
            if sum(counts) > 0:
                ttft = tuple(zip((*TTFT_BUCKETS_S, math.inf), counts, strict=True))
            tokens = sum(scrape.itl_counts) - sum(oldest.itl_counts)
            if tokens > 0:
                itl = (scrape.itl_sum_s - oldest.itl_sum_s) / tokens
            if previous is not None:
                firsts = _delta(previous.ttft_counts, scrape.ttft_counts)
                recent = tuple(zip((*TTFT_BUCKETS_S, math.inf), firsts, strict=True))
                tokens = sum(scrape.itl_counts) - sum(previous.itl_counts)
                if tokens > 0:
                    mean = (scrape.itl_sum_s - previous.itl_sum_s) / tokens
                interval = now - previous_s
                prompt = _prompt_load(oldest, history[0][0], previous, scrape, now, interval)
            else:
                prompt = PromptLoad(None)  # one scrape: no rate yet (the live sidecar's first scrape)
            load = ServerLoad(float(scrape.running), float(scrape.waiting), None)
        if itl is not None or ttft is not None:
            replica.last_usable_s = now
        since = replica.last_usable_s if replica.last_usable_s is not None else replica.started_s
        replica.state, decision = govern(
            replica.state,
            GovernorReading(
                now_s=now,
                age_s=now - since,
                itl_s=itl,
                ttft_buckets=ttft,
                load=load,
                itl_mean_s=mean,
                scaling_up=reading.scaling_up if self.options.bridge else None,
                load_rps=reading.load_rps,
                ttft_interval_buckets=recent,
                prompt=prompt,
                interval_s=interval,
            ),
            self.config,
        )
        self.reasons[decision.reason] += 1
        return self._setting(decision.setpoint)
