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


class NoValue(Exception):
    """``PrometheusClient.value`` got no number: the credentials could not be read, Prometheus could not
    answer or refused, or the answer was not one number. The message starts with the query's name."""


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

    def value(
        self,
        server: str,
        expr: str,
        *,
        credentials: PrometheusCredentials,
        deadline_s: float,
        what: str,
    ) -> float | None:
        """The one number an instant query answers (``one_value``): None for an empty vector; NaN and
        Inf as they come. Raises ``NoValue`` with ``what`` (the query's name) leading the message."""
        try:
            headers = credentials.request_headers()
        except OSError as exc:
            raise NoValue(f"{what}: cannot read the credentials: {exc}") from exc
        try:
            result_type, result = self.query(server, expr, headers=headers, deadline_s=deadline_s)
        except (PrometheusUnavailable, PrometheusRejected) as exc:
            raise NoValue(f"{what}: {exc}") from exc
        try:
            return one_value(result_type, result)
        except ValueError as exc:
            raise NoValue(f"{what} {exc}") from None


def one_value(result_type: str, result: Any) -> float | None:
    """The one number of an instant query's answer: a scalar, or a vector of at most one series (None
    when it has none). ``ValueError`` for any other shape, its message saying what came back
    (``returned 2 series, need one``), to follow the query's name."""
    if result_type == "scalar":
        return _sample_value(result)
    if result_type != "vector" or not isinstance(result, list):
        raise ValueError(f"returned a {result_type} result, need a scalar or one series")
    if not result:
        return None
    if len(result) > 1:
        raise ValueError(f"returned {len(result)} series, need one")
    series = result[0]
    if not isinstance(series, dict) or not isinstance(series.get("metric", {}), dict):
        raise ValueError("returned a series of an unexpected shape")
    return _sample_value(series.get("value"))


def _sample_value(pair: Any) -> float:
    """Prometheus' ``[timestamp, "value"]`` pair; the value is a decimal string (NaN and Inf spelled out)."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise ValueError("returned a sample of an unexpected shape")
    try:
        return float(pair[1])
    except ValueError:
        raise ValueError("returned a sample value that is not a number") from None


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
