"""Synthetic traces: deterministic for a seed, prompts in the stated range, bursts shorter than a cold
start on a daily shape."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from gpumodel.model import H100_LLAMA_8B
from sim.synth import DAILY_SHAPE, DiurnalBursts, LongContextChat, main, synthetic_trace, write_csv
from sim.trace import TraceError, load_trace

SMALL_DAY = DiurnalBursts(seed=3, span_s=1200.0, peak_rps=10.0, bursts_per_hour_of_day=1.0)


def test_same_seed_same_requests_other_seed_other_requests() -> None:
    a, b = LongContextChat(seed=2, span_s=300).trace(), LongContextChat(seed=2, span_s=300).trace()
    assert a == b
    assert LongContextChat(seed=3, span_s=300).trace().requests != a.requests
    assert SMALL_DAY.trace() == DiurnalBursts(seed=3, span_s=1200.0, peak_rps=10.0,
                                              bursts_per_hour_of_day=1.0).trace()  # fmt: skip


def test_long_context_prompts_are_5k_to_20k_tokens_across_the_range() -> None:
    trace = LongContextChat(seed=1, span_s=900).trace()
    prompts = [r.prompt_tokens for r in trace.requests]
    assert min(prompts) >= 5_000 and max(prompts) <= 20_000
    assert sum(p < 10_000 for p in prompts) > 0.3 * len(prompts)  # log-uniform: half under 10k
    assert sum(p > 15_000 for p in prompts) > 0.1 * len(prompts)
    arrivals = [r.arrival_s for r in trace.requests]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0


def test_bursts_are_shorter_than_a_cold_start_and_raise_the_rate() -> None:
    day = SMALL_DAY
    bursts = day.bursts()
    assert len(bursts) >= 5
    assert all(b.duration_s < H100_LLAMA_8B.cold_start_s for b in bursts)
    assert all(a.start_s + a.duration_s <= b.start_s for a, b in itertools.pairwise(bursts))
    trace = day.trace()
    inside = outside = 0
    inside_s = sum(b.duration_s for b in bursts)
    for r in trace.requests:
        if any(b.covers(r.arrival_s) for b in bursts):
            inside += 1
        else:
            outside += 1
    assert inside / inside_s > 1.5 * outside / (day.span_s - inside_s)  # bursts add at least half a peak


def test_the_day_has_a_night_trough_and_an_afternoon_peak() -> None:
    day = DiurnalBursts(seed=1, span_s=2400.0, peak_rps=20.0, bursts_per_hour_of_day=1e-9)
    hour = day.span_s / 24
    counts = [0] * 24
    for r in day.trace().requests:
        counts[min(23, int(r.arrival_s / hour))] += 1
    night, afternoon = sum(counts[1:5]), sum(counts[13:17])
    assert afternoon > 4 * night
    assert max(DAILY_SHAPE) == 1.0 and min(DAILY_SHAPE) < 0.2
    assert day.base_rps(14.5 * hour) == pytest.approx(20.0 * 0.99)


def test_named_traces_and_csv_round_trip(tmp_path: Path) -> None:
    trace = synthetic_trace("synth:long-context", seed=4)
    assert trace.name == "synth:long-context seed 4"
    path = tmp_path / "t.csv"
    write_csv(trace, path)
    back = load_trace(path)
    assert [r.prompt_tokens for r in back.requests] == [r.prompt_tokens for r in trace.requests]
    with pytest.raises(TraceError, match="unknown synthetic trace"):
        synthetic_trace("synth:nope")


def test_generator_command_writes_a_loadable_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "day.csv"
    assert main(["diurnal-bursts", "--seed", "2", "--out", str(out)]) == 0
    assert "synth:diurnal-bursts seed 2" in capsys.readouterr().out
    assert len(load_trace(out).requests) == len(synthetic_trace("diurnal-bursts", 2).requests)
    assert main(["long-context", "--out", str(tmp_path / "missing" / "x.csv")]) == 1
