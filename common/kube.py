"""The one path to the Kubernetes API: configuration, bounded GETs, lists, watches and POSTs.

Every call goes through ``common.http.BoundedHttpClient``: a total deadline per request, a cap on the
decompressed answer, no redirects. A watch streams its JSON lines through the client's ``sink`` with a
deadline a little over the server-side ``timeoutSeconds`` and a cap on each event, so a stream that
never ends, or one enormous event, costs bounded time and memory.

Configuration comes from the in-cluster service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, the
token re-read whenever the kubelet rotates it, ``ca.crt``) or from one kubeconfig file (the current
context's server, CA, bearer token or token file, client certificate). Credential plugins (``exec``,
``auth-provider``), basic auth, impersonation, ``proxy-url`` and ``tls-server-name`` are refused with an
error naming the file: running a plugin is a program execution this code does not do.

Errors are ``KubeError``; an answer with an error status is ``KubeApiError`` carrying the status, the
API's ``reason`` and a truncated ``message``, never the body. ``410 Gone`` (a resourceVersion or continue
token too old) is ``ResourceExpired``: relist.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common.http import BoundedHttpClient, DeadlineExceeded, HttpError, HttpResponse

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_DEADLINE_S = 10.0
# One answer (one page of a list). A page of 100 pods is 0.5-2 MB with their managedFields; the cap
# also bounds what one json.loads may cost (about ten times the text).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_PAGE_SIZE = 100
DEFAULT_MAX_ITEMS = 50_000
# etcd refuses objects over 1.5 MiB; one watch event is one object plus its envelope.
DEFAULT_WATCH_EVENT_MAX_BYTES = 4 * 1024 * 1024
# All the events of one watch call (up to timeoutSeconds long), each already capped above.
DEFAULT_WATCH_MAX_BYTES = 256 * 1024 * 1024
# The watch deadline is the server-side timeoutSeconds plus this: the server ends a watch on time.
DEFAULT_WATCH_GRACE_S = 10.0
MAX_WATCH_TIMEOUT_S = 3600
MESSAGE_MAX_CHARS = 200
_ERROR_BODY_MAX_BYTES = 64 * 1024
_TOKEN_MAX_BYTES = 64 * 1024
_KUBECONFIG_MAX_BYTES = 4 * 1024 * 1024
_IN_CLUSTER = "the in-cluster service account"


class KubeError(Exception):
    """The API could not be used: unreachable, too slow, answer too big or malformed."""


class KubeConfigError(KubeError):
    """No usable configuration; the message names the file or variable and what is wrong with it."""


class KubeApiError(KubeError):
    """The API answered an error status."""

    def __init__(self, what: str, status: int, reason: str = "", message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        text = f"{what}: HTTP {status}"
        if reason:
            text += f" {reason}"
        if message:
            text += f": {message}"
        super().__init__(text)


class ResourceExpired(KubeApiError):
    """410 Gone: the resourceVersion or continue token is too old; list again."""


@dataclass(frozen=True)
class KubeConfig:
    """Where the API is and how to authenticate to it. Secrets are left out of ``repr``."""

    server: str
    source: str
    """Where this came from, for messages: "the in-cluster service account" or "kubeconfig PATH"."""
    ca_file: Path | None = None
    ca_data: str | None = field(default=None, repr=False)
    insecure_skip_tls_verify: bool = False
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KubeList:
    items: list[dict[str, Any]]
    resource_version: str


# -- configuration -----------------------------------------------------------------------------------------
def in_cluster_server(environ: Mapping[str, str] | None = None) -> str | None:
    """``https://HOST:PORT`` of the API server from the service environment, or None outside a cluster."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def in_cluster_config(
    environ: Mapping[str, str] | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> KubeConfig:
    server = in_cluster_server(environ)
    if server is None:
        raise KubeConfigError(
            f"{_IN_CLUSTER}: KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT are not set (not in a cluster)"
        )
    token_file = service_account_dir / "token"
    if not token_file.is_file():
        raise KubeConfigError(f"{_IN_CLUSTER}: no token at {token_file} (automountServiceAccountToken?)")
    ca_file = service_account_dir / "ca.crt"
    return KubeConfig(
        server=server,
        source=_IN_CLUSTER,
        token_file=token_file,
        ca_file=ca_file if ca_file.is_file() else None,
    )


def load_config(kubeconfig: str | Path | None = None) -> KubeConfig:
    """From ``kubeconfig`` when given, else from the in-cluster service account."""
    if kubeconfig:
        return kubeconfig_config(kubeconfig)
    return in_cluster_config()


# Fields of a kubeconfig that change who we are or how we connect; ignoring them would silently be wrong.
_REFUSED_USER_FIELDS = {
    "exec": "runs an exec credential plugin",
    "auth-provider": "uses an auth-provider plugin",
    "username": "uses basic auth",
    "password": "uses basic auth",
    "as": "impersonates another user",
    "as-groups": "impersonates groups",
    "as-uid": "impersonates a uid",
    "as-user-extra": "impersonates with extra fields",
}
_REFUSED_CLUSTER_FIELDS = {"proxy-url": "goes through a proxy", "tls-server-name": "sets tls-server-name"}


def kubeconfig_config(path: str | Path, context: str | None = None) -> KubeConfig:
    """The ``context`` (default: ``current-context``) of the kubeconfig file at ``path``.

    Relative file paths inside it are relative to the file's folder, as kubectl reads them."""
    import yaml  # noqa: PLC0415 (only a kubeconfig needs YAML; the in-cluster path never does)

    path = Path(path)
    where = f"kubeconfig {path}"

    def fail(problem: str) -> KubeConfigError:
        return KubeConfigError(f"{where}: {problem}")

    try:
        with path.open("rb") as f:
            raw = f.read(_KUBECONFIG_MAX_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror or type(exc).__name__})") from exc
    if len(raw) > _KUBECONFIG_MAX_BYTES:
        raise fail(f"larger than {_KUBECONFIG_MAX_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise fail("not valid YAML") from exc
    if not isinstance(doc, dict):
        raise fail("not a kubeconfig (no mapping at the top)")
    name = context or doc.get("current-context")
    if not name or not isinstance(name, str):
        raise fail("no current-context")
    ctx = _named(doc, "contexts", name, "context", fail)
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if not isinstance(cluster_name, str):
        raise fail(f"context {name!r} names no cluster")
    cluster = _named(doc, "clusters", cluster_name, "cluster", fail)
    user = _named(doc, "users", user_name, "user", fail) if isinstance(user_name, str) else {}
    for key, what in _REFUSED_USER_FIELDS.items():
        if user.get(key):
            raise fail(
                f"user {user_name!r} {what} ({key}), which is not supported: give it a token, "
                "tokenFile or client certificate (for example a service-account token)"
            )
    for key, what in _REFUSED_CLUSTER_FIELDS.items():
        if cluster.get(key):
            raise fail(f"cluster {cluster_name!r} {what} ({key}), which is not supported")
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise fail(f"cluster {cluster_name!r} has no http(s) server")

    def file_field(section: dict[str, Any], key: str) -> Path | None:
        value = section.get(key)
        if not value:
            return None
        if not isinstance(value, str):
            raise fail(f"{key} is not a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() else path.parent / p

    def data_field(section: dict[str, Any], key: str) -> bytes | None:
        value = section.get(key)
        if not value:
            return None
        if not isinstance(value, str):
            raise fail(f"{key} is not base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise fail(f"{key} is not valid base64") from exc

    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise fail(f"user {user_name!r}: token is not text")
    ca_data = data_field(cluster, "certificate-authority-data")
    return KubeConfig(
        server=server,
        source=where,
        ca_file=file_field(cluster, "certificate-authority"),
        ca_data=ca_data.decode("ascii", errors="replace") if ca_data else None,
        insecure_skip_tls_verify=cluster.get("insecure-skip-tls-verify") is True,
        token=token or None,
        token_file=file_field(user, "tokenFile"),
        client_cert_file=file_field(user, "client-certificate"),
        client_key_file=file_field(user, "client-key"),
        client_cert_data=data_field(user, "client-certificate-data"),
        client_key_data=data_field(user, "client-key-data"),
    )


def _named(
    doc: dict[str, Any], section: str, name: Any, inner: str, fail: Callable[[str], Exception]
) -> dict[str, Any]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise fail(f"{section} is not a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(inner) or {}
            if not isinstance(body, dict):
                raise fail(f"{section} entry {name!r} is not a mapping")
            return body
    raise fail(f"no {inner} named {name!r} in {section}")


def ssl_context(config: KubeConfig) -> ssl.SSLContext | None:
    """The TLS settings of ``config`` (None for a plain-HTTP server); ``KubeConfigError`` when its CA or
    client certificate cannot be loaded."""
    if not config.server.startswith("https://"):
        return None
    try:
        if config.ca_data:  # data wins over a file, as kubectl reads it
            ctx = ssl.create_default_context(cadata=config.ca_data)
        elif config.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(config.ca_file))
        else:
            ctx = ssl.create_default_context()
        if config.insecure_skip_tls_verify:
            log.warning(
                "%s: insecure-skip-tls-verify: the API server's certificate is not checked", config.source
            )
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _load_client_certificate(ctx, config)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise KubeConfigError(f"{config.source}: cannot load its TLS certificates ({exc})") from exc
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, config: KubeConfig) -> None:
    cert_data, key_data = config.client_cert_data, config.client_key_data
    if cert_data is None and key_data is None:
        if config.client_cert_file is not None:
            key = config.client_key_file or config.client_cert_file
            ctx.load_cert_chain(str(config.client_cert_file), str(key))
        return
    # ssl loads a certificate chain only from files: write the PEM data to a private folder, load it
    # into the context (which keeps it in memory) and delete it at once.
    with tempfile.TemporaryDirectory(prefix="eo-kube-") as folder:
        cert = Path(folder) / "client.crt"
        key = Path(folder) / "client.key"
        for target, given, fallback in (
            (cert, cert_data, config.client_cert_file),
            (key, key_data, config.client_key_file),
        ):
            if given is not None:
                data = given
            elif fallback is not None:
                data = fallback.read_bytes()
            else:
                raise ValueError("a client certificate needs both the certificate and the key")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(str(cert), str(key))


class _Token:
    """The bearer token: a fixed one, or a file re-read whenever it changes (the kubelet rotates
    projected service-account tokens by swapping the file). A file that vanishes keeps the last token."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._value = token
        self._file = token_file
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        if self._file is None:
            return self._value
        with self._lock:
            try:
                st = os.stat(self._file)
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                if stamp != self._seen:
                    with open(self._file, "rb") as f:
                        text = f.read(_TOKEN_MAX_BYTES).decode("utf-8", errors="replace").strip()
                    self._value, self._seen = text or self._value, stamp
            except OSError as exc:
                log.debug("cannot read the token file %s (%s); keeping the last token", self._file, exc)
            return self._value


# -- the client --------------------------------------------------------------------------------------------
class KubeClient:
    """Bounded calls to one API server. Paths are absolute API paths (``/api/v1/pods``).

    Thread-safe: the connection pools are. A watch runs on a pool of its own, so a long watch never
    holds a connection that GETs need."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_items: int = DEFAULT_MAX_ITEMS,
        watch_event_max_bytes: int = DEFAULT_WATCH_EVENT_MAX_BYTES,
        watch_max_bytes: int = DEFAULT_WATCH_MAX_BYTES,
        watch_grace_s: float = DEFAULT_WATCH_GRACE_S,
        pool_maxsize: int = 2,
        user_agent: str = "energy-orchestrator",
    ) -> None:
        self.config = config
        self._base = config.server.rstrip("/")
        self._token = _Token(config.token, config.token_file)
        self._tls = ssl_context(config)
        self._page_size = page_size
        self._max_items = max_items
        self._watch_event_max_bytes = watch_event_max_bytes
        self._watch_max_bytes = watch_max_bytes
        self._watch_grace_s = watch_grace_s
        self._user_agent = user_agent
        self._http = BoundedHttpClient(
            deadline_s=deadline_s,
            max_body_bytes=max_body_bytes,
            ssl_context=self._tls,
            num_pools=1,
            pool_maxsize=pool_maxsize,
        )
        self._watch_http: BoundedHttpClient | None = None
        self._lock = threading.Lock()

    # -- calls ------------------------------------------------------------------------------------------
    def get_json(
        self, path: str, params: Mapping[str, object] | None = None, *, deadline_s: float | None = None
    ) -> dict[str, Any]:
        """GET ``path``; the answer as a JSON object."""
        response = self._call(self._http, "GET", path, params, deadline_s=deadline_s)
        return _json_object(response, f"GET {path}")

    def list(self, path: str, params: Mapping[str, object] | None = None) -> KubeList:
        """Every item of a list, page by page (``limit``/``continue``), and the list's resourceVersion
        (the one to watch from)."""
        items: list[dict[str, Any]] = []
        version = ""
        token = ""
        while True:
            page_params: dict[str, object] = {**(params or {}), "limit": self._page_size}
            if token:
                page_params["continue"] = token
            doc = self.get_json(path, page_params)
            page = doc.get("items")
            if page is None:
                page = []
            if not isinstance(page, list) or not all(isinstance(i, dict) for i in page):
                raise KubeError(f"GET {path}: items is not a list of objects")
            items.extend(page)
            if len(items) > self._max_items:
                raise KubeError(f"GET {path}: more than {self._max_items} items")
            meta = doc.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            version = version or _text(meta.get("resourceVersion"))
            token = _text(meta.get("continue"))
            if not token:
                return KubeList(items, version)

    def watch(
        self,
        path: str,
        params: Mapping[str, object] | None,
        on_event: Callable[[str, dict[str, Any]], object],
        timeout_s: int = 300,
    ) -> str:
        """Watch ``path`` (pass ``resourceVersion`` in ``params``) for up to ``timeout_s`` seconds.

        ``on_event(type, object)`` gets each ADDED, MODIFIED and DELETED event as it arrives; bookmarks
        only move the version. Returns the last resourceVersion seen (to watch on from), or the one
        asked for. The stream ends when the server closes it (after ``timeoutSeconds``) or at that plus
        the grace; both are a normal end. ``ResourceExpired`` when the version is too old; an exception
        ``on_event`` raises ends the watch and propagates."""
        timeout_s = max(1, min(int(timeout_s), MAX_WATCH_TIMEOUT_S))
        query: dict[str, object] = {
            "allowWatchBookmarks": True,
            **(params or {}),
            "watch": True,
            "timeoutSeconds": timeout_s,
        }
        stream = _WatchStream(
            f"watch {path}", on_event, self._watch_event_max_bytes, _text(query.get("resourceVersion"))
        )
        try:
            self._call(
                self._watch_client(),
                "GET",
                path,
                query,
                deadline_s=timeout_s + self._watch_grace_s,
                sink=stream.feed,
                on_headers=stream.headers,
                max_body_bytes=self._watch_max_bytes,
                checked=False,
            )
        except KubeError as exc:
            if stream.status == 200 and isinstance(exc.__cause__, DeadlineExceeded):
                # The server did not end the watch on time: ours ends it; the events read so far count.
                log.debug("%s: ended at the client's deadline", path)
                return stream.version
            raise
        stream.finish()
        return stream.version

    def post_json(
        self, path: str, body: Mapping[str, Any], *, deadline_s: float | None = None
    ) -> dict[str, Any]:
        """POST ``body`` as JSON; the created object (``{}`` for an empty answer)."""
        payload = json.dumps(body).encode()
        response = self._call(self._http, "POST", path, None, body=payload, deadline_s=deadline_s)
        return _json_object(response, f"POST {path}") if response.body.strip() else {}

    def close(self) -> None:
        self._http.close()
        with self._lock:
            if self._watch_http is not None:
                self._watch_http.close()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _watch_client(self) -> BoundedHttpClient:
        with self._lock:
            if self._watch_http is None:
                self._watch_http = BoundedHttpClient(
                    deadline_s=MAX_WATCH_TIMEOUT_S + self._watch_grace_s,
                    max_body_bytes=self._watch_max_bytes,
                    ssl_context=self._tls,
                    num_pools=1,
                    pool_maxsize=1,
                )
            return self._watch_http

    def _call(
        self,
        http: BoundedHttpClient,
        method: str,
        path: str,
        params: Mapping[str, object] | None,
        *,
        body: bytes | None = None,
        checked: bool = True,
        **kwargs: Any,
    ) -> HttpResponse:
        what = f"{method} {path}"
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        token = self._token.current()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        query = {k: _param(v) for k, v in (params or {}).items()}
        try:
            response = http.request(
                method, self._base + path, params=query, headers=headers, body=body, **kwargs
            )
        except HttpError as exc:
            raise KubeError(f"{what}: {exc}") from exc
        if checked and response.status >= 300:
            raise api_error(what, response.status, response.body)
        return response


def path_segment(name: str) -> str:
    """``name`` quoted for one segment of an API path."""
    return quote(name, safe="")


def api_error(what: str, status: int, body: bytes) -> KubeApiError:
    """The error for an answer with ``status``: its Status document's reason and a short message."""
    doc: Any = None
    if len(body) <= _ERROR_BODY_MAX_BYTES:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
    return status_error(what, status, doc if isinstance(doc, dict) else {})


def status_error(what: str, status: int, doc: Mapping[str, Any]) -> KubeApiError:
    """The error for ``status`` with the API's Status document ``doc`` (its reason, a short message)."""
    cls = ResourceExpired if status == 410 else KubeApiError
    return cls(what, status, _status_reason(doc), _short(doc.get("message")))


def _status_reason(doc: Mapping[str, Any]) -> str:
    reason = doc.get("reason")
    # A Status reason is one CamelCase word; anything else is not echoed.
    if isinstance(reason, str) and reason.isalnum() and len(reason) <= 64:
        return reason
    return ""


def _short(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in value[: MESSAGE_MAX_CHARS + 1])
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 3] + "..."


def _json_object(response: HttpResponse, what: str) -> dict[str, Any]:
    try:
        return response.json_object()
    except HttpError as exc:
        raise KubeError(f"{what}: {exc}") from exc


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class _WatchStream:
    """Splits a watch body into JSON lines, each at most ``max_event_bytes``, and dispatches them."""

    def __init__(
        self,
        what: str,
        on_event: Callable[[str, dict[str, Any]], object],
        max_event_bytes: int,
        version: str,
    ) -> None:
        self._what = what
        self._on_event = on_event
        self._max = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for a newline
        self._error_body = bytearray()
        self.status = 0
        self.version = version

    def headers(self, status: int, _headers: Mapping[str, str]) -> None:
        self.status = status

    def feed(self, data: bytes) -> None:
        if self.status != 200:
            # An error answer: keep its start for the Status reason, drop the rest.
            room = _ERROR_BODY_MAX_BYTES - len(self._error_body)
            self._error_body += data[: max(room, 0)]
            return
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                if self._scanned > self._max:
                    raise KubeError(f"{self._what}: an event larger than {self._max} bytes")
                return
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if len(line) > self._max:
                raise KubeError(f"{self._what}: an event larger than {self._max} bytes")
            self._dispatch(line)

    def finish(self) -> None:
        if self.status != 200:
            raise api_error(self._what, self.status, bytes(self._error_body))
        if self._buffer.strip():
            self._dispatch(bytes(self._buffer))
        self._buffer.clear()

    def _dispatch(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KubeError(f"{self._what}: an event that is not JSON") from exc
        if not isinstance(event, dict):
            raise KubeError(f"{self._what}: an event that is not a JSON object")
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(kind, str) or not isinstance(obj, dict):
            raise KubeError(f"{self._what}: an event without type and object")
        if kind == "ERROR":
            code = obj.get("code")
            status = code if isinstance(code, int) and not isinstance(code, bool) else 500
            raise status_error(self._what, status, obj)
        meta = obj.get("metadata")
        if (
            isinstance(meta, dict)
            and isinstance(meta.get("resourceVersion"), str)
            and meta["resourceVersion"]
        ):
            self.version = meta["resourceVersion"]
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(kind, obj)
