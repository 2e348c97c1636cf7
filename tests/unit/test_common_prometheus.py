"""``common.prometheus.one_value``: the one rule for "one number" in an instant query's answer, shared by
the sidecar's Prometheus latency source and its scale-up source."""

from __future__ import annotations

import math
from typing import Any

import pytest

from common.prometheus import one_value


def series(value: Any, metric: Any = None) -> dict[str, Any]:
    return {"metric": {} if metric is None else metric, "value": value}


def test_a_scalar_and_a_one_series_vector_give_their_number() -> None:
    assert one_value("scalar", [1.0, "0.75"]) == 0.75
    assert one_value("vector", [series([1.0, "2"])]) == 2.0


def test_an_empty_vector_is_no_number_not_zero() -> None:
    assert one_value("vector", []) is None


def test_nan_and_inf_come_as_prometheus_spells_them() -> None:
    nan = one_value("vector", [series([1.0, "NaN"])])
    assert nan is not None and math.isnan(nan)
    assert one_value("scalar", [1.0, "+Inf"]) == math.inf


@pytest.mark.parametrize(
    ("result_type", "result", "message"),
    [
        ("matrix", [], "returned a matrix result, need a scalar or one series"),
        ("vector", {"a": 1}, "returned a vector result"),
        ("vector", [series([1.0, "1"]), series([1.0, "2"])], "returned 2 series, need one"),
        ("vector", ["0.75"], "returned a series of an unexpected shape"),
        ("vector", [series([1.0, "1"], metric=["a"])], "returned a series of an unexpected shape"),
        ("vector", [series([1.0, 0.75])], "returned a sample of an unexpected shape"),
        ("scalar", "0.75", "returned a sample of an unexpected shape"),
        ("scalar", [1.0, "fast"], "returned a sample value that is not a number"),
    ],
)
def test_any_other_shape_is_refused_saying_what_came(result_type: str, result: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_value(result_type, result)
