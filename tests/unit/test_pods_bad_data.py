"""The pure rules for ordinary bad data: NaN/Inf/negative samples are missing, duplicates count once,
resets are per series, mirrors are bounded; and the streaming line filter that keeps a read small."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.pods import counters
from exporter.pods.appmetrics import (
    MAX_SERIES_PER_METRIC,
    SERVERS,
    SIGNATURES,
    HistogramReading,
    Sample,
    TooManySeries,
    extract,
    parse_annotations,
    total,
    wanted_sample_names,
)
from exporter.pods.counters import MirroredCounter, MirroredHistogram
from exporter.pods.linefilter import MAX_KEPT_LINES, MAX_LINE_BYTES, LineFilter, TextRejected

REQ = "vllm:request_success_total"
LAT = "vllm:e2e_request_latency_seconds"


def req(reason: str, value: float) -> Sample:
    return Sample(REQ, {"finished_reason": reason, "model_name": "m"}, value)


def hist(buckets: dict[str, float], count: float, total_s: float = 1.0, model: str = "m") -> list[Sample]:
    labels = {"model_name": model}
    out = [Sample(f"{LAT}_bucket", {**labels, "le": le}, v) for le, v in buckets.items()]
    return [*out, Sample(f"{LAT}_count", labels, count), Sample(f"{LAT}_sum", labels, total_s)]


# -- extraction -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -3.0])
def test_unusable_counter_sample_is_missing_not_a_number(bad: float) -> None:
    reading = extract([req("stop", 10), req("length", bad)], SERVERS["vllm"])
    assert reading.requests is not None and list(reading.requests.values()) == [10]
    assert extract([req("stop", bad)], SERVERS["vllm"]).requests is None


def test_duplicated_line_counts_once_and_the_first_wins() -> None:
    reading = extract([req("stop", 705), req("stop", 705), req("stop", 1)], SERVERS["vllm"])
    assert total(reading.requests) == 705


def test_histogram_series_with_a_nan_bucket_is_left_out_whole() -> None:
    good = hist({"1.0": 4, "+Inf": 5}, 5, model="a")
    bad = hist({"1.0": math.nan, "+Inf": 5}, 5, model="b")
    reading = extract([*good, *bad], SERVERS["vllm"])
    assert reading.latency is not None
    assert list(reading.latency.values()) == [HistogramReading(((1.0, 4), (math.inf, 5)), 1.0, 5)]
    assert extract(bad, SERVERS["vllm"]).latency is None


def test_histogram_series_keep_their_own_keys_and_need_the_same_bounds() -> None:
    a = hist({"1.0": 4, "+Inf": 5}, 5, model="a")
    b = hist({"1.0": 1, "+Inf": 2}, 2, model="b")
    other_bounds = hist({"2.0": 1, "+Inf": 2}, 2, model="c")
    reading = extract([*a, *b, *other_bounds], SERVERS["vllm"])
    assert reading.latency is not None and len(reading.latency) == 2


def test_too_many_series_refuse_the_reading() -> None:
    samples = [req(f"r{i}", 1) for i in range(MAX_SERIES_PER_METRIC + 1)]
    with pytest.raises(TooManySeries):
        extract(samples, SERVERS["vllm"])


def test_wanted_names_cover_every_profile_and_the_annotations() -> None:
    names = wanted_sample_names(parse_annotations({}))
    assert {REQ, f"{LAT}_bucket", f"{LAT}_count", "tgi_request_success", "sglang:num_requests_total"} <= names
    assert "vllm:num_preemptions_total" not in names
    config = parse_annotations({"energy-orchestrator.io/requests-metric": "myapp_requests"})
    annotated = wanted_sample_names(config)
    assert {"myapp_requests", "myapp_requests_total", f"{LAT}_bucket"} <= annotated
    assert REQ not in annotated  # the annotation replaces every profile's requests counter


# -- mirrors ----------------------------------------------------------------------------------------------
STOP, LENGTH = (REQ, (("r", "stop"),)), (REQ, (("r", "length"),))


def test_counter_resets_are_per_series() -> None:
    c = MirroredCounter()
    c.update({STOP: 40, LENGTH: 30})
    assert c.update({STOP: 2, LENGTH: 34}) == 2 + 4  # stop was reset; length grew by 4
    assert c.total == 76


def test_missing_series_keeps_its_value_and_catches_up() -> None:
    c = MirroredCounter()
    c.update({STOP: 50, LENGTH: 50})
    assert c.update({STOP: 60}) == 10
    assert c.update({STOP: 60, LENGTH: math.nan}) == 0  # NaN is missing too
    assert c.update({STOP: 70, LENGTH: 55}) == 15
    assert c.total == 125


def test_new_series_after_the_first_read_is_growth() -> None:
    c = MirroredCounter()
    c.update({STOP: 10})
    assert c.update({STOP: 10, LENGTH: 2}) == 2


@given(
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()), min_size=1, max_size=30)
)
def test_counter_total_is_finite_and_never_decreases(values: list[float | None]) -> None:
    c = MirroredCounter()
    previous = 0.0
    for v in values:
        c.update({} if v is None else {STOP: v})
        assert math.isfinite(c.total) and c.total >= previous
        previous = c.total


def test_mirror_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counters, "MAX_TRACKED_SERIES", 10)
    c = MirroredCounter()
    for i in range(100):
        c.update({(REQ, (("r", str(i)),)): 1.0})
    assert len(c._last) == 10


def test_histogram_nan_is_skipped_and_the_mirror_recovers() -> None:
    h = MirroredHistogram()
    key = (LAT, ())
    h.update({key: HistogramReading(((1.0, 5), (math.inf, 10)), 20.0, 10)})
    h.update({key: HistogramReading(((1.0, math.nan), (math.inf, 12)), 24.0, 12)})
    h.update({key: HistogramReading(((1.0, 8), (math.inf, 14)), 28.0, 14)})
    assert h.totals is not None
    assert h.totals.buckets == ((1.0, 8), (math.inf, 14)) and (h.totals.sum, h.totals.count) == (28.0, 14)


def test_histogram_reset_is_per_series() -> None:
    h = MirroredHistogram()
    a, b = (LAT, (("m", "a"),)), (LAT, (("m", "b"),))
    h.update(
        {
            a: HistogramReading(((1.0, 5), (math.inf, 10)), 20.0, 10),
            b: HistogramReading(((1.0, 1), (math.inf, 1)), 1.0, 1),
        }
    )
    h.update(
        {
            a: HistogramReading(((1.0, 1), (math.inf, 1)), 2.0, 1),
            b: HistogramReading(((1.0, 2), (math.inf, 3)), 3.0, 3),
        }
    )
    assert h.totals is not None and h.totals.buckets == ((1.0, 5 + 1 + 1 + 1), (math.inf, 10 + 1 + 1 + 2))


# -- the line filter --------------------------------------------------------------------------------------
PAGE = (
    b"# HELP vllm:request_success_total Finished.\n"
    b"# TYPE vllm:request_success_total counter\n"
    b'vllm:request_success_total{finished_reason="stop"} 3.0\n'
    b'vllm:request_success_created{finished_reason="stop"} 1.7e9\n'
    b'vllm:num_preemptions_total{model_name="m"} 2.0\n'
    b'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 3.0\n'
    b"vllm:e2e_request_latency_seconds_count 3.0"  # the last line without a newline
)


def page_filter() -> LineFilter:
    return LineFilter(wanted_sample_names(parse_annotations({})), SIGNATURES)


def test_filter_keeps_only_wanted_sample_lines_and_detects_the_server() -> None:
    f = page_filter()
    f.feed(PAGE)
    assert f.finish() == [
        b'vllm:request_success_total{finished_reason="stop"} 3.0',
        b'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 3.0',
        b"vllm:e2e_request_latency_seconds_count 3.0",
    ]
    assert f.detected == "vllm"


@given(st.lists(st.integers(min_value=0, max_value=len(PAGE)), max_size=12))
def test_filter_result_does_not_depend_on_where_the_pieces_split(cuts: list[int]) -> None:
    whole = page_filter()
    whole.feed(PAGE)
    split = page_filter()
    bounds = [0, *sorted(cuts), len(PAGE)]
    for start, end in itertools.pairwise(bounds):
        split.feed(PAGE[start:end])
    assert split.finish() == whole.finish() and split.detected == whole.detected


def test_long_unwanted_line_is_skipped_without_being_held() -> None:
    f = page_filter()
    f.feed(b'vllm:lora_info{adapters="' + b"x" * (3 * MAX_LINE_BYTES))
    assert len(f._partial) <= MAX_LINE_BYTES
    f.feed(b'"} 1\nvllm:request_success_total 4\n')
    assert f.finish() == [b"vllm:request_success_total 4"]


def test_long_wanted_line_and_too_many_wanted_lines_refuse_the_page() -> None:
    with pytest.raises(TextRejected):
        page_filter().feed(b'vllm:request_success_total{x="' + b"y" * (MAX_LINE_BYTES + 10))
    many = b"".join(b'vllm:request_success_total{i="%d"} 1\n' % i for i in range(MAX_KEPT_LINES + 1))
    with pytest.raises(TextRejected):
        page_filter().feed(many)
