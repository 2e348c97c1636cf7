"""The demo's load schedule replays consecutive pieces of the trace at each phase's speed."""

from __future__ import annotations

import pytest

from demo.schedule import Phase, phase_at, schedule_requests
from sim.trace import Request, Trace


def trace_every_second(n: int) -> Trace:
    return Trace("t", tuple(Request(float(i), 10 + i, 5) for i in range(n)))


def test_phases_replay_consecutive_pieces_at_their_speed() -> None:
    phases = [Phase("normal", 10, 2), Phase("quiet", 5, 0), Phase("surge", 5, 4)]
    out = schedule_requests(trace_every_second(100), phases)
    normal = [r for r in out if r.arrival_s < 10]
    surge = [r for r in out if r.arrival_s >= 15]
    assert [r.arrival_s for r in normal] == [i / 2 for i in range(20)]
    assert not [r for r in out if 10 <= r.arrival_s < 15]
    # The surge continues the trace where the normal phase stopped (trace second 20), 4x faster.
    assert surge[0].prompt_tokens == 10 + 20
    assert [r.arrival_s for r in surge[:3]] == pytest.approx([15.0, 15.25, 15.5])
    assert len(surge) == 20


def test_negative_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="phase 'bad'"):
        schedule_requests(trace_every_second(3), [Phase("bad", -1, 1)])


def test_phase_at() -> None:
    phases = [Phase("a", 10, 1), Phase("b", 5, 1)]
    assert phase_at(phases, 3) == phases[0]
    assert phase_at(phases, 12) == phases[1]
    assert phase_at(phases, 15) is None
