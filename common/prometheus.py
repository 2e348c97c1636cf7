"""The one Prometheus HTTP API client: instant queries with auth, TLS, a deadline and a size cap.

Used by the scaler's KPI source, the sidecar's Prometheus latency source and the demo. Credentials are
read from files on every call (projected tokens rotate). The answer's shape is checked before anything
reads it: a caller gets ``(result_type, result)`` with ``result_type`` one of Prometheus' four, or an
exception. Error messages name the server and the HTTP status, never the body a peer sent (a target
must not be able to make the scaler echo a page it found).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from common.http import BoundedHttpClient, DeadlineExceeded, HttpError

RESULT_TYPES = ("vector", "scalar", "matrix", "string")
MAX_ERROR_CHARS = 200


class PrometheusUnavailable(Exception):
    """Prometheus could not answer: unreachable, too slow, too big, or not a Prometheus answer."""


class PrometheusRejected(Exception):
    """Prometheus refused the query (HTTP 400/422, ``bad_data``): the query itself is wrong."""


@dataclass(frozen=True)
class PrometheusCredentials:
    """How the operator's Prometheus is reached; secrets live in files."""

    bearer_token_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def request_headers(self) -> dict[str, str]:
        """Operator headers plus the credential; ``OSError`` when a secret file cannot be read."""
        out = dict(self.headers)
        if self.bearer_token_file is not None:
            out["Authorization"] = "Bearer " + self.bearer_token_file.read_text().strip()
        elif self.basic_auth_user is not None and self.basic_auth_password_file is not None:
            pair = f"{self.basic_auth_user}:{self.basic_auth_password_file.read_text().strip()}"
            out["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return out


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """At most ``limit`` characters of ``text`` (for messages that echo input)."""
    return text if len(text) <= limit else text[:limit] + "…"


class PrometheusClient:
    """Instant queries against one or more Prometheus-compatible servers through one bounded pool."""

    def __init__(self, http: BoundedHttpClient) -> None:
        self.http = http

    def query(
        self,
        server: str,
        expr: str,
        *,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = None,
    ) -> tuple[str, Any]:
        """``(resultType, result)`` of an instant query at ``server`` (its base URL)."""
        url = server.rstrip("/") + "/api/v1/query"
        # POST keeps long combined queries out of URLs (and out of proxies' access logs).
        try:
            response = self.http.post(
                url,
                body=_form({"query": expr}),
                headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
                deadline_s=deadline_s,
            )
        except DeadlineExceeded as exc:
            raise PrometheusUnavailable(f"Prometheus at {server} did not answer in time: {exc}") from exc
        except HttpError as exc:
            raise PrometheusUnavailable(f"Prometheus at {server} unreachable: {exc}") from exc
        if response.status in (400, 422):
            raise PrometheusRejected(f"Prometheus at {server} rejected the query: {_api_error(response)}")
        if response.status != 200:
            raise PrometheusUnavailable(f"Prometheus at {server} answered HTTP {response.status}")
        try:
            doc = response.json_object()
        except HttpError as exc:
            raise PrometheusUnavailable(f"Prometheus at {server} answered no JSON object") from exc
        data = doc.get("data")
        if doc.get("status") != "success" or not isinstance(data, dict):
            raise PrometheusUnavailable(f"Prometheus at {server} answered no query result")
        result_type = data.get("resultType")
        if result_type not in RESULT_TYPES or "result" not in data:
            raise PrometheusUnavailable(f"Prometheus at {server} answered an unknown result type")
        return str(result_type), data["result"]


def _form(fields: Mapping[str, str]) -> bytes:
    return urlencode(fields).encode()


def _api_error(response: Any) -> str:
    """Prometheus' own ``errorType: error`` for a refused query (its words, bounded; not arbitrary HTML)."""
    try:
        doc = response.json_object()
    except HttpError:
        return f"HTTP {response.status}"
    if isinstance(doc.get("error"), str):
        return truncate(f"{doc.get('errorType', 'error')}: {doc['error']}")
    return f"HTTP {response.status}"
