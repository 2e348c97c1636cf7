"""The demo's load: consecutive pieces of a real trace, each replayed at its own speed-up.

A phase of ``duration_s`` wall-clock seconds at speed-up ``k`` replays the next ``k * duration_s``
seconds of the trace; a phase with speed-up 0 is silence. The request mix (prompt and output lengths)
is always the trace's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sim.trace import Request, Trace


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    speedup: float


def schedule_requests(trace: Trace, phases: Sequence[Phase]) -> tuple[Request, ...]:
    """Arrivals in wall-clock seconds from the start of the first phase."""
    out: list[Request] = []
    requests = trace.requests
    cursor_trace_s = 0.0
    start_s = 0.0
    i = 0
    for phase in phases:
        if phase.duration_s < 0 or phase.speedup < 0:
            raise ValueError(f"phase {phase.name!r}: duration and speed-up must be >= 0")
        end_trace_s = cursor_trace_s + phase.duration_s * phase.speedup
        while i < len(requests) and requests[i].arrival_s < end_trace_s:
            r = requests[i]
            if r.arrival_s >= cursor_trace_s:
                at = start_s + (r.arrival_s - cursor_trace_s) / phase.speedup
                out.append(Request(at, r.prompt_tokens, r.output_tokens))
            i += 1
        cursor_trace_s = end_trace_s
        start_s += phase.duration_s
    return tuple(out)


def phase_at(phases: Sequence[Phase], t_s: float) -> Phase | None:
    start = 0.0
    for phase in phases:
        if t_s < start + phase.duration_s:
            return phase
        start += phase.duration_s
    return None
