"""Trace parsing (both formats, errors with line numbers), time compression and overlay."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.trace import Request, Trace, TraceError, compress, load_trace, overlay, parse_rows

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:48.0000000,10,1
"""


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_format_sorted_and_shifted_to_zero(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, AZURE))
    assert [r.prompt_tokens for r in trace.requests] == [374, 10, 396]
    assert trace.requests[0].arrival_s == 0.0
    assert trace.requests[1].arrival_s == pytest.approx(1.31941, abs=1e-5)
    assert trace.requests[2].arrival_s == pytest.approx(4.314579, abs=1e-6)


@pytest.mark.parametrize("header", ["arrival_s,prompt_tokens,output_tokens\n", ""])
def test_generic_format_with_or_without_header(tmp_path: Path, header: str) -> None:
    trace = load_trace(write(tmp_path, header + "5.5,100,20\n7,3,1\n"))
    assert trace.requests == (Request(0.0, 100, 20), Request(1.5, 3, 1))


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("arrival_s,prompt_tokens,output_tokens\n0,1,2\n1,x,2\n", "t.csv:3", "prompt tokens"),
        ("0,1,2\n1,2\n", "t.csv:2", "expected 3 columns"),
        ("0,1,-2\n", "t.csv:1", "output tokens must be >= 0"),
        ("0,1,2\nsoon,1,2\n", "t.csv:2", "not a number of seconds"),
        (AZURE + "yesterday,1,2\n", "t.csv:5", "timestamp"),
        ("0,1,2\nnan,1,2\n", "t.csv:2", "finite"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, text: str, where: str, words: str) -> None:
    with pytest.raises(TraceError) as err:
        load_trace(write(tmp_path, text))
    assert where in str(err.value)
    assert words in str(err.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace(tmp_path / "absent.csv")
    with pytest.raises(TraceError, match="no requests"):
        load_trace(write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n"))


def test_compress_divides_arrival_times() -> None:
    trace = parse_rows([["0", "1", "1"], ["8", "2", "2"], ["16", "3", "3"]], "x")
    fast = compress(trace, 8)
    assert [r.arrival_s for r in fast.requests] == [0.0, 1.0, 2.0]
    assert [r.output_tokens for r in fast.requests] == [1, 2, 3]
    with pytest.raises(ValueError):
        compress(trace, 0)


def test_overlay_multiplies_rate_and_keeps_span() -> None:
    trace = Trace("x", tuple(Request(float(t), 10, 5) for t in range(0, 100, 10)))
    over = overlay(trace, 3)
    assert len(over.requests) == 30
    assert over.span_s <= 110.0
    arrivals = [r.arrival_s for r in over.requests]
    assert arrivals == sorted(arrivals)
    assert len(set(arrivals)) == 30  # the copies are shifted, not stacked
    assert overlay(trace, 1) is trace
