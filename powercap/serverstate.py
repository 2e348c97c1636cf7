"""The governor's reader: its inference server's gauges and TTFT/ITL histograms from one /metrics scrape.

One bounded read per interval through ``common.http.BoundedHttpClient`` (total deadline, decompressed
size cap, no redirects), names from the one registry ``common.servers``: requests running and waiting,
KV-cache use, the TTFT histogram's buckets and ``_sum``, the ITL histogram's ``_sum`` and ``_count``, and
the prompt-token counter. Successive
scrapes are kept for the window (at most ``MAX_SNAPSHOTS``), from which ``read`` returns what
``powercap.governor.GovernorReading`` takes: the window's TTFT buckets, the window's mean inter-token
time, the last interval's mean inter-token time, the current gauges, and the prompt load
(``PromptLoad``: the prompt-token rate, first tokens and their mean TTFT over the last interval, the
rate and mean prompt over the window).

Missing data is never a number: a gauge the page lacks, or whose value is NaN, infinite or negative,
makes ``load`` None (the governor then runs at the ceiling, ``state_unusable``); an unreadable page
raises ``ServerStateError``; a counter that went backwards (a server restart) restarts the window. A
prompt counter the server names but the page lacks (or NaN, negative), or no previous scrape to take a
rate from, gives a ``PromptLoad`` without a rate (the governor then holds the ceiling); a server that
names none (Triton) gives no ``PromptLoad`` at all.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from common import servers
from common.http import BoundedHttpClient, HttpError
from common.prometheus import truncate
from powercap.governor import PromptLoad, ServerLoad

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_SNAPSHOTS = 512


class ServerStateError(Exception):
    """The page could not be read or parsed."""


@dataclass(frozen=True)
class Snapshot:
    at_s: float
    ttft: tuple[tuple[float, float], ...]
    """Cumulative TTFT bucket counts by upper bound (ascending, last +Inf); empty without one."""
    itl_sum_s: float | None
    itl_count: float | None
    ttft_sum_s: float | None = None
    prompt_tokens: float | None = None


@dataclass(frozen=True)
class ServerSample:
    load: ServerLoad | None
    ttft_buckets: tuple[tuple[float, float], ...] | None
    """Per bucket (upper bound, first tokens in the window); None when none came."""
    itl_window_mean_s: float | None
    itl_interval_mean_s: float | None
    ttft_interval_buckets: tuple[tuple[float, float], ...] | None = None
    """Per bucket, first tokens since the previous scrape; None on the first scrape or with none."""
    prompt: PromptLoad | None = None
    """None where the server publishes no prompt-token counter."""
    interval_s: float | None = None
    """Seconds since the previous scrape (None on the first)."""


def _first(values: dict[str, float], metric: servers.Metric | None) -> float | None:
    if metric is None:
        return None
    for name in metric.names:
        if name in values:
            return values[name]
    return None


class ServerStateSource:
    def __init__(
        self,
        url: str,
        server: str,
        window_s: float,
        timeout_s: float = 2.0,
        http: BoundedHttpClient | None = None,
    ) -> None:
        if timeout_s <= 0 or window_s <= 0:
            raise ValueError("timeout_s and window_s must be > 0")
        self._url = url
        self._server = servers.server(server)
        self._window_s = window_s
        self._deadline_s = timeout_s
        self._http = http or BoundedHttpClient(
            deadline_s=timeout_s, max_body_bytes=MAX_BODY_BYTES, num_pools=2
        )
        self._snapshots: deque[Snapshot] = deque(maxlen=MAX_SNAPSHOTS)

    def read(self, now_s: float, deadline_s: float | None = None) -> ServerSample:
        """One scrape at ``now_s``, within ``deadline_s`` (default: the source's own; never longer).
        Raises ``ServerStateError``."""
        deadline = self._deadline_s if deadline_s is None else min(deadline_s, self._deadline_s)
        if not deadline > 0:
            raise ServerStateError(f"scraping {self._url}: no time left in this interval")
        try:
            resp = self._http.get(self._url, deadline_s=deadline, max_body_bytes=MAX_BODY_BYTES)
        except HttpError as exc:
            raise ServerStateError(f"scraping {self._url}: {exc}") from exc
        if resp.status != 200:
            raise ServerStateError(f"scraping {self._url}: HTTP {resp.status}")
        load, snap = self._parse(resp.text(), now_s)
        previous = self._snapshots[-1] if self._snapshots else None
        if previous is not None and _went_back(previous, snap):
            self._snapshots.clear()
            previous = None
        self._snapshots.append(snap)
        while len(self._snapshots) > 1 and self._snapshots[0].at_s < now_s - self._window_s:
            self._snapshots.popleft()
        oldest = self._snapshots[0]
        recent = _ttft_delta(previous, snap) if previous is not None else None
        prompt = _prompt_load(oldest, previous, snap) if self._server.prompt_tokens else None
        return ServerSample(
            load,
            _ttft_delta(oldest, snap),
            _mean(oldest, snap),
            _mean(previous, snap),
            recent,
            prompt,
            snap.at_s - previous.at_s if previous is not None else None,
        )

    def _parse(self, text: str, now_s: float) -> tuple[ServerLoad | None, Snapshot]:
        s = self._server
        gauges = {m.name: m for m in (s.requests_running, s.requests_waiting, s.kv_cache_usage) if m}
        wanted = {n for m in gauges.values() for n in m.names}
        prompt_names = s.prompt_tokens.names if s.prompt_tokens else ()
        prompts: dict[str, float] = {}
        ttft_sums: dict[str, float] = {}
        ttft_names = s.ttft.names if s.ttft else ()
        itl_names = s.itl.names if s.itl else ()
        values: dict[str, float] = {}
        ttft: dict[str, dict[float, float]] = {}
        itl: dict[str, list[float]] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    name = sample.name
                    if name in wanted:
                        metric = next(m for m in gauges.values() if name in m.names)
                        if metric.has_labels(sample.labels):
                            values[name] = values.get(name, 0.0) + sample.value
                    elif name in prompt_names:
                        assert s.prompt_tokens is not None
                        if s.prompt_tokens.has_labels(sample.labels):
                            prompts[name] = prompts.get(name, 0.0) + sample.value
                    elif name.endswith("_sum") and name[:-4] in ttft_names:
                        ttft_sums[name[:-4]] = ttft_sums.get(name[:-4], 0.0) + sample.value
                    elif name.endswith("_bucket") and name[:-7] in ttft_names:
                        le = float(sample.labels["le"])
                        per = ttft.setdefault(name[:-7], {})
                        per[le] = per.get(le, 0.0) + sample.value
                    elif name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in itl_names:
                        base, kind = name.rsplit("_", 1)
                        pair = itl.setdefault(base, [0.0, 0.0])
                        pair[0 if kind == "sum" else 1] += sample.value
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerStateError(f"malformed metrics from {self._url}: {truncate(str(exc))}") from exc
        running = _first(values, s.requests_running)
        waiting = _first(values, s.requests_waiting)
        kv = _first(values, s.kv_cache_usage)
        load = ServerLoad(running, waiting, kv) if running is not None else None
        if load is not None and (not load.usable() or (s.requests_waiting is not None and waiting is None)):
            load = None
        ttft_scale = s.ttft.to_seconds if s.ttft else 1.0
        buckets: tuple[tuple[float, float], ...] = ()
        ttft_sum = None
        for name in ttft_names:
            if name in ttft:
                per = ttft[name]
                if math.inf in per and all(math.isfinite(c) and c >= 0 for c in per.values()):
                    buckets = tuple((le * ttft_scale, per[le]) for le in sorted(per))
                    total = ttft_sums.get(name)
                    if total is not None and math.isfinite(total) and total >= 0:
                        ttft_sum = total * ttft_scale
                break
        prompt = _first(prompts, s.prompt_tokens)
        if prompt is not None and not (math.isfinite(prompt) and prompt >= 0):
            prompt = None
        itl_sum = itl_count = None
        itl_scale = s.itl.to_seconds if s.itl else 1.0
        for name in itl_names:
            if name in itl:
                total, count = itl[name]
                if math.isfinite(total) and math.isfinite(count) and total >= 0 and count >= 0:
                    itl_sum, itl_count = total * itl_scale, count
                break
        return load, Snapshot(now_s, buckets, itl_sum, itl_count, ttft_sum, prompt)


def _went_back(a: Snapshot, b: Snapshot) -> bool:
    if a.itl_count is not None and b.itl_count is not None and b.itl_count < a.itl_count:
        return True
    if a.prompt_tokens is not None and b.prompt_tokens is not None and b.prompt_tokens < a.prompt_tokens:
        return True
    return bool(a.ttft and b.ttft and b.ttft[-1][1] < a.ttft[-1][1])


def _ttft_delta(a: Snapshot, b: Snapshot) -> tuple[tuple[float, float], ...] | None:
    """Non-cumulative bucket counts between two snapshots; None when no first token came."""
    if not b.ttft or [le for le, _ in a.ttft] != [le for le, _ in b.ttft]:
        return None
    cumulative = (
        [max(0.0, y - x) for (_, x), (_, y) in zip(a.ttft, b.ttft, strict=True)] if a is not b else []
    )
    if not cumulative or cumulative[-1] <= 0:
        return None
    counts = [cumulative[0]] + [
        max(0.0, cumulative[i] - cumulative[i - 1]) for i in range(1, len(cumulative))
    ]
    return tuple((le, c) for (le, _), c in zip(b.ttft, counts, strict=True))


def _mean(a: Snapshot | None, b: Snapshot) -> float | None:
    if a is None or a is b or a.itl_count is None or b.itl_count is None:
        return None
    if a.itl_sum_s is None or b.itl_sum_s is None:
        return None
    tokens = b.itl_count - a.itl_count
    return (b.itl_sum_s - a.itl_sum_s) / tokens if tokens > 0 else None


def _firsts(a: Snapshot, b: Snapshot) -> float | None:
    """First tokens between two snapshots (the TTFT histogram's +Inf bucket); None without one."""
    if not a.ttft or not b.ttft:
        return None
    return max(0.0, b.ttft[-1][1] - a.ttft[-1][1])


def _prompt_load(oldest: Snapshot, previous: Snapshot | None, b: Snapshot) -> PromptLoad:
    """The prompt load of the last interval and the window; no rate on the first scrape or without the
    counter in both scrapes (missing data is never a number: the governor then holds the ceiling)."""
    if previous is None or previous.prompt_tokens is None or b.prompt_tokens is None:
        return PromptLoad(None)
    firsts = _firsts(previous, b)
    ttft_sum = None
    if previous.ttft_sum_s is not None and b.ttft_sum_s is not None:
        ttft_sum = b.ttft_sum_s - previous.ttft_sum_s
    window_tokens = None if oldest.prompt_tokens is None else b.prompt_tokens - oldest.prompt_tokens
    return PromptLoad.from_counts(
        b.at_s - previous.at_s,
        b.prompt_tokens - previous.prompt_tokens,
        firsts,
        ttft_sum,
        b.at_s - oldest.at_s,
        window_tokens,
        _firsts(oldest, b),
    )
