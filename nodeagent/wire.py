"""The request a sidecar publishes for the node agent, read from its /metrics page. Pure: text in.

Three families, named in ``powercap.metrics`` (a test keeps both lists equal), as prometheus_client
renders them::

    eo_powercap_requested_watts{uuid="GPU-…"} 650.0
    eo_powercap_requested_sm_clock_hertz{uuid="GPU-…"} 1.5e9
    eo_powercap_request_timestamp_seconds 1.7e9

Read strictly: only these exact line shapes count; one timestamp, finite and positive; each GPU at most
once in each family, with a ``GPU-`` UUID and a finite value > 0. A GPU in both families asks for a
clock lock with a power limit beside it (the sidecar's budget guard): one ask, actuator ``clocks``,
with ``budget_w``. Anything else about these
families makes the whole page ``Malformed`` (refused, nothing applied): a request is all or nothing.
A page without any of them is ``NoRequest`` (a sidecar in dry-run or direct mode): no data, no refusal.
Every other line of the page is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nodeagent.decide import GpuAsk

REQUEST_WATTS = "eo_powercap_requested_watts"
REQUEST_CLOCK = "eo_powercap_requested_sm_clock_hertz"
REQUEST_TIMESTAMP = "eo_powercap_request_timestamp_seconds"
NAMES = (REQUEST_WATTS, REQUEST_CLOCK, REQUEST_TIMESTAMP)
MAX_GPUS = 16
"""More GPUs than a node has in one request is not a request."""

_UUID = re.compile(r"GPU-[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_PER_GPU = re.compile(
    r'(eo_powercap_requested_watts|eo_powercap_requested_sm_clock_hertz)\{uuid="([^"]*)"\} (\S+)'
)
_STAMP = re.compile(r"eo_powercap_request_timestamp_seconds (\S+)")
_MENTIONS = re.compile(r"^(?:" + "|".join(NAMES) + r")(?![A-Za-z0-9_:])")


class Malformed(ValueError):
    """The page carries the request families, but not as a request; the message says what is wrong."""


class NoRequest(ValueError):
    """The page publishes no request at all."""


@dataclass(frozen=True)
class Request:
    asks: tuple[GpuAsk, ...]
    timestamp_s: float


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Malformed(f"{what}: {text[:20]!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise Malformed(f"{what}: {value!r} is not a finite number > 0")
    return value


def parse_request(page: str) -> Request:
    """The request on ``page``; ``NoRequest`` when there is none, ``Malformed`` when it is not one."""
    watts: dict[str, float] = {}
    clocks: dict[str, float] = {}
    order: list[str] = []
    stamps: list[float] = []
    for raw in page.splitlines():
        line = raw.strip()
        if not _MENTIONS.match(line):
            continue
        if match := _PER_GPU.fullmatch(line):
            family, uuid, value = match.groups()
            if not _UUID.fullmatch(uuid):
                raise Malformed(f"{family}: {uuid[:60]!r} is not a GPU UUID")
            per_family = watts if family == REQUEST_WATTS else clocks
            if uuid in per_family:
                raise Malformed(f"GPU {uuid} is asked for twice in {family}")
            number = _number(value, f"{family}{{uuid={uuid!r}}}")
            per_family[uuid] = number if family == REQUEST_WATTS else number / 1e6
            if uuid not in order:
                order.append(uuid)
            if len(order) > MAX_GPUS:
                raise Malformed(f"more than {MAX_GPUS} GPUs asked for")
        elif match := _STAMP.fullmatch(line):
            stamps.append(_number(match.group(1), REQUEST_TIMESTAMP))
        else:
            raise Malformed(f"unexpected line {line[:80]!r}")
    asks = {
        uuid: GpuAsk(uuid, "clocks", clocks[uuid], watts.get(uuid))
        if uuid in clocks
        else GpuAsk(uuid, "power", watts[uuid])
        for uuid in order
    }
    if not stamps and not asks:
        raise NoRequest("the page publishes no request (a sidecar in dry-run or direct mode?)")
    if len(stamps) != 1:
        raise Malformed(f"{len(stamps)} request timestamps, not one")
    return Request(tuple(asks.values()), stamps[0])
