"""The cold-start bridge's source: is this pod's workload scaling up? One bounded Prometheus query.

While a workload wants more replicas than it has ready, the new ones are cold-starting (60-180 s for an
LLM server) and the running ones carry the load that outgrew them: the governor then runs every
replica at its ceiling (``scale_up_bridge``). Where the answer comes from, by ``--scale-up-source``:

* ``scaler`` (default): eo-scaler's own decision, ``eo_scaler_desired_replicas`` above
  ``eo_scaler_current_replicas`` (both ``{namespace, workload}``; the largest over scaler replicas),
  only while the trigger is in ``enforce`` mode (in ``advisory`` mode nothing scales: no bridge);
* ``kube-state-metrics``: the Deployment's ``kube_deployment_spec_replicas`` above
  ``kube_deployment_status_replicas_available``;
* ``--scale-up-query``: any PromQL whose value is above 0 while scaling up.

The answer is ``True``, ``False`` or ``None`` (unknown). Unknown is what an empty result, NaN, a
refused or unanswered query, a bad shape or no configured workload give: it never bridges and never
holds the feedforward back, so missing data is never a reason to lower a clock, nor to raise one.
Every read goes through ``common.prometheus.PrometheusClient`` (one total deadline, a size cap, no
redirects; the bearer token re-read on every query).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from common.http import BoundedHttpClient
from common.prometheus import NoValue, PrometheusClient, PrometheusCredentials, truncate

SOURCES: tuple[str, ...] = ("scaler", "kube-state-metrics", "off")
MAX_BODY_BYTES = 256 * 1024
"""The answer is one number; anything near this is not such an answer."""
# Kubernetes names (DNS-1123 labels and subdomains): nothing that could close a PromQL string.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class ScaleUpError(Exception):
    """The query could not be answered, or its answer is not one number."""


def valid_name(value: str) -> bool:
    """A Kubernetes object name (what may go between quotes in a PromQL matcher)."""
    return len(value) <= 253 and _NAME.fullmatch(value) is not None


def default_query(source: str, namespace: str, workload: str) -> str | None:
    """The PromQL for ``source`` and this workload; None when off or the names are not given."""
    if source == "off" or not namespace or not workload:
        return None
    if not (valid_name(namespace) and valid_name(workload)):
        raise ValueError(f"not Kubernetes names: namespace {namespace[:60]!r}, workload {workload[:60]!r}")
    if source == "scaler":
        sel = f'namespace="{namespace}",workload="{workload}"'
        return (
            f"(max(eo_scaler_desired_replicas{{{sel}}}) - max(eo_scaler_current_replicas{{{sel}}})) "
            f'and on() (max(eo_scaler_mode_info{{{sel},mode="enforce"}}) == 1)'
        )
    if source == "kube-state-metrics":
        sel = f'namespace="{namespace}",deployment="{workload}"'
        return (
            f"max(kube_deployment_spec_replicas{{{sel}}}) - "
            f"max(kube_deployment_status_replicas_available{{{sel}}})"
        )
    raise ValueError(f"unknown scale-up source {source!r}")


class ScaleUpSource:
    """Answers "scaling up?" from one instant query per call."""

    def __init__(
        self,
        url: str,
        query: str,
        timeout_s: float = 5.0,
        bearer_token_file: Path | None = None,
        client: PrometheusClient | None = None,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        self.url = url
        self.query = query
        self._deadline_s = timeout_s
        self._credentials = PrometheusCredentials(bearer_token_file=bearer_token_file)
        self._client = client or PrometheusClient(
            BoundedHttpClient(deadline_s=timeout_s, max_body_bytes=MAX_BODY_BYTES, num_pools=2)
        )

    def read(self, deadline_s: float | None = None) -> bool | None:
        """True while scaling up, False when not, None when the query has no answer (no series, NaN).
        ``deadline_s`` shortens the source's own deadline. Raises ``ScaleUpError``."""
        deadline = self._deadline_s if deadline_s is None else min(deadline_s, self._deadline_s)
        what = f"scale-up query {truncate(self.query)!r}"
        if not deadline > 0:
            raise ScaleUpError(f"{what}: no time left in this interval")
        try:
            value = self._client.value(
                self.url, self.query, credentials=self._credentials, deadline_s=deadline, what=what
            )
        except NoValue as exc:
            raise ScaleUpError(str(exc)) from exc
        if value is None or not math.isfinite(value):
            return None
        return value > 0
