"""Request traces: parse the two CSV formats, compress time, overlay shifted copies.

Formats (detected from the header line):

* Azure LLM inference trace (Splitwise, Patel et al., ISCA 2024; Azure/AzurePublicDataset, CC-BY 4.0):
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock timestamps such as
  ``2023-11-16 18:17:03.9799600`` (7 fractional digits: Python only parses 6, so we cut the rest).
* Generic: ``arrival_s,prompt_tokens,output_tokens`` (header optional), arrival in seconds from any origin.

Arrival times are shifted so the first request arrives at 0 s. Errors name the file and the line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_HEADER = ("arrival_s", "prompt_tokens", "output_tokens")


class TraceError(ValueError):
    """The trace cannot be read; the message names the file and, where it applies, the line."""


@dataclass(frozen=True, slots=True)
class Request:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    name: str
    requests: tuple[Request, ...]
    """Sorted by arrival; the first arrives at 0 s."""

    @property
    def span_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0


def _parse_timestamp(text: str) -> float:
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def _tokens(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _arrival(text: str, azure: bool) -> float:
    try:
        return _parse_timestamp(text) if azure else float(text)
    except ValueError:
        what = "a timestamp like 2023-11-16 18:17:03.9799600" if azure else "a number of seconds"
        raise ValueError(f"arrival {text!r} is not {what}") from None


def parse_rows(rows: Iterable[Sequence[str]], name: str) -> Trace:
    """Parse CSV rows (the header, if any, first). Line numbers in errors count from 1."""
    requests: list[Request] = []
    azure = False
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not cells or all(not c for c in cells):
            continue
        if lineno == 1 and tuple(cells[:3]) == AZURE_HEADER:
            azure = True
            continue
        if lineno == 1 and tuple(cells[:3]) == GENERIC_HEADER:
            continue
        if len(cells) != 3:
            raise TraceError(f"{name}:{lineno}: expected 3 columns, got {len(cells)}: {','.join(row)!r}")
        try:
            arrival = _arrival(cells[0], azure)
            prompt = _tokens(cells[1], "prompt tokens")
            output = _tokens(cells[2], "output tokens")
        except ValueError as exc:
            expected = "TIMESTAMP,ContextTokens,GeneratedTokens" if azure else ",".join(GENERIC_HEADER)
            raise TraceError(f"{name}:{lineno}: {exc} (expected {expected})") from None
        if not math.isfinite(arrival):
            raise TraceError(f"{name}:{lineno}: arrival time is not a finite number")
        requests.append(Request(arrival, prompt, output))
    if not requests:
        raise TraceError(f"{name}: no requests in the trace")
    requests.sort(key=lambda r: r.arrival_s)
    origin = requests[0].arrival_s
    shifted = tuple(Request(r.arrival_s - origin, r.prompt_tokens, r.output_tokens) for r in requests)
    return Trace(name, shifted)


def load_trace(path: Path) -> Trace:
    """Read a trace file in either format (see the module docstring)."""
    try:
        with path.open(newline="") as f:
            return parse_rows(csv.reader(f), path.name)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text (CSV) file") from None
    except csv.Error as exc:
        raise TraceError(f"{path}: malformed CSV: {exc}") from None


def compress(trace: Trace, speedup: float) -> Trace:
    """Divide every arrival time by ``speedup`` (8 replays an hour in 7.5 minutes at 8x the rate)."""
    if not speedup > 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    if speedup == 1:
        return trace
    requests = tuple(Request(r.arrival_s / speedup, r.prompt_tokens, r.output_tokens) for r in trace.requests)
    return Trace(f"{trace.name} x{speedup:g}", requests)


def overlay(trace: Trace, copies: int, shift_s: float | None = None) -> Trace:
    """Superpose ``copies`` copies of the trace, copy ``i`` shifted by ``i * shift_s`` and wrapped around
    the trace's span, so the span stays the same and the rate is multiplied by ``copies``.

    The default shift is ``span / copies``: the copies' bursts land at different times, as independent
    tenants' would.
    """
    if copies < 1:
        raise ValueError(f"overlay copies must be >= 1, got {copies}")
    if copies == 1:
        return trace
    # Wrap modulo a period slightly longer than the span so the last request does not land on 0 s.
    period = trace.span_s + (trace.span_s / max(len(trace.requests), 1))
    if period <= 0:
        raise ValueError("cannot overlay a trace whose requests all arrive at once")
    shift = period / copies if shift_s is None else shift_s
    merged = [
        Request((r.arrival_s + i * shift) % period, r.prompt_tokens, r.output_tokens)
        for i in range(copies)
        for r in trace.requests
    ]
    merged.sort(key=lambda r: r.arrival_s)
    return Trace(f"{trace.name} +{copies} copies", tuple(merged))
