"""The bounded client's streaming mode (``sink``): the decompressed body goes to the caller piece by
piece, bounded in size per piece, with the same cap and deadline as a kept body."""

from __future__ import annotations

import pytest

from common.http import BodyTooLarge, BoundedHttpClient, DeadlineExceeded
from tests.support.hostile_http import Behaviour, hostile_server

STEP_BOUND = 256 * 1024  # the client's largest decompression step


def test_plain_body_is_streamed_not_kept() -> None:
    body = b"line\n" * 100_000
    pieces: list[bytes] = []
    with hostile_server(Behaviour(body=body)) as (url, _):
        response = BoundedHttpClient(deadline_s=5).get(url, sink=pieces.append)
    assert response.body == b"" and b"".join(pieces) == body


def test_gzip_body_is_inflated_in_bounded_pieces() -> None:
    size = 8 * 1024 * 1024  # zeros: each network chunk of it inflates to megabytes
    pieces: list[int] = []
    with hostile_server(Behaviour(mode="gzip_bomb", bomb_bytes=size)) as (url, _):
        BoundedHttpClient(deadline_s=5, max_body_bytes=2 * size).get(
            url, sink=lambda piece: pieces.append(len(piece))
        )
    assert sum(pieces) == size and max(pieces) <= STEP_BOUND


def test_the_cap_and_the_deadline_hold_with_a_sink() -> None:
    with hostile_server(Behaviour(mode="gzip_bomb")) as (url, _), pytest.raises(BodyTooLarge):
        BoundedHttpClient(deadline_s=10, max_body_bytes=1024 * 1024).get(url, sink=lambda _: None)
    trickle = Behaviour(mode="trickle", trickle_interval_s=0.05)
    with hostile_server(trickle) as (url, _), pytest.raises(DeadlineExceeded):
        BoundedHttpClient(deadline_s=0.4).get(url, sink=lambda _: None)


def test_an_error_raised_by_the_sink_ends_the_read_and_propagates() -> None:
    class Stop(Exception):
        pass

    def refuse(_: bytes) -> None:
        raise Stop

    with hostile_server(Behaviour(mode="huge")) as (url, _), pytest.raises(Stop):
        BoundedHttpClient(deadline_s=5).get(url, sink=refuse)
