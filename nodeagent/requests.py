"""Reading the opted-in sidecars' requests: one bounded GET of each pod's /metrics over the pod network.

The agent connects only to the IP the Kubernetes API gives the pod, only for pods that opted in, and
only on the port the operator set (``--request-port``, or the pod's
``energy-orchestrator.io/power-agent-port`` annotation). Every read goes through
``common.http.BoundedHttpClient``: a total deadline, a size cap (a sidecar's page is a few KiB), no
redirects. A read that fails is no data (``Read.error``), never a refusal: the request then ages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from common.http import BoundedHttpClient, HttpError
from nodeagent.decide import Pod, Read
from nodeagent.wire import Malformed, NoRequest, parse_request

log = logging.getLogger(__name__)

OPT_IN_ANNOTATION = "energy-orchestrator.io/power-agent"
PORT_ANNOTATION = "energy-orchestrator.io/power-agent-port"
PAGE_MAX_BYTES = 256 * 1024
MAX_PARALLEL_READS = 8


def opted_in(annotations: Mapping[str, str]) -> bool:
    return annotations.get(OPT_IN_ANNOTATION, "").strip().lower() == "true"


def request_port(annotations: Mapping[str, str], default: int) -> int | None:
    """The port to read, or None when the annotation is not a port (the read is then an error)."""
    text = annotations.get(PORT_ANNOTATION)
    if text is None:
        return default
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        return None
    return int(text)


def url_of(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


class RequestReader:
    def __init__(self, deadline_s: float) -> None:
        self._http = BoundedHttpClient(deadline_s=deadline_s, max_body_bytes=PAGE_MAX_BYTES, pool_maxsize=2)
        self._pool = ThreadPoolExecutor(MAX_PARALLEL_READS, thread_name_prefix="eo-node-agent-read")

    def read(self, pod: Pod, url: str | None) -> Read:
        if url is None:
            return Read(pod, error="no pod IP or request port yet")
        try:
            response = self._http.get(url)
        except HttpError as exc:
            return Read(pod, error=str(exc))
        if response.status != 200:
            return Read(pod, error=f"{url}: HTTP {response.status}")
        try:
            request = parse_request(response.body.decode("utf-8", errors="replace"))
        except NoRequest as exc:
            return Read(pod, error=str(exc))
        except Malformed as exc:
            return Read(pod, malformed=str(exc))
        return Read(pod, request.asks, request.timestamp_s)

    def read_all(self, targets: Sequence[tuple[Pod, str | None]]) -> list[Read]:
        """Read every pod at once: a slow pod costs its deadline, not the sum of all of them."""
        return list(self._pool.map(lambda t: self.read(*t), targets))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
