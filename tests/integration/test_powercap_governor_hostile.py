"""The governor's two new reads against hostile peers: the server-state scrape and the bridge's
Prometheus query each cost at most their deadline and end in their own error (never a number)."""

from __future__ import annotations

import time

import pytest

from powercap.scaleup import ScaleUpError, ScaleUpSource
from powercap.serverstate import ServerStateError, ServerStateSource
from tests.support.hostile_http import Behaviour, hostile_server

MODES = ["trickle", "hang", "huge", "gzip_bomb", "redirect", "status"]
DEADLINE_S = 1.0
SLACK_S = 1.5


@pytest.mark.parametrize("mode", MODES)
def test_the_server_state_read_is_bounded(mode: str) -> None:
    with hostile_server(Behaviour(mode=mode, status=500)) as (url, _):
        source = ServerStateSource(url + "/metrics", "vllm", window_s=60.0, timeout_s=DEADLINE_S)
        began = time.monotonic()
        with pytest.raises(ServerStateError):
            source.read(0.0)
        assert time.monotonic() - began < DEADLINE_S + SLACK_S


@pytest.mark.parametrize("mode", MODES)
def test_the_bridge_query_is_bounded(mode: str) -> None:
    with hostile_server(Behaviour(mode=mode, status=500)) as (url, _):
        source = ScaleUpSource(url, "up", timeout_s=DEADLINE_S)
        began = time.monotonic()
        with pytest.raises(ScaleUpError):
            source.read()
        assert time.monotonic() - began < DEADLINE_S + SLACK_S


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
        b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},'
        b'{"metric":{},"value":[1,"2"]}]}}',
        b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}',
        b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}',
        b"not json",
    ],
    ids=["matrix", "two-series", "value-not-a-string", "value-not-a-number", "not-json"],
)
def test_a_bridge_answer_of_the_wrong_shape_is_an_error(body: bytes) -> None:
    behaviour = Behaviour(body=body, content_type="application/json")
    with hostile_server(behaviour) as (url, _), pytest.raises(ScaleUpError):
        ScaleUpSource(url, "up", timeout_s=DEADLINE_S).read()


def test_a_shorter_deadline_for_the_rest_of_the_interval_is_kept() -> None:
    with hostile_server(Behaviour(mode="hang")) as (url, _):
        source = ServerStateSource(url + "/metrics", "vllm", window_s=60.0, timeout_s=5.0)
        began = time.monotonic()
        with pytest.raises(ServerStateError):
            source.read(0.0, deadline_s=0.3)
        assert time.monotonic() - began < 0.3 + SLACK_S
        with pytest.raises(ServerStateError, match="no time left"):
            source.read(0.0, deadline_s=0.0)
