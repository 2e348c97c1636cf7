"""The one Kubernetes API path (common/kube.py) against real HTTP peers: the recorded-API replay server,
hostile peers (trickle, huge, gzip bomb, a watch that never ends, one enormous event), a loopback HTTPS
API server that checks client certificates (a throwaway CA made with the openssl CLI), kubeconfig and
in-cluster configuration, and a service-account token that rotates."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.kube import (
    MESSAGE_MAX_CHARS,
    KubeApiError,
    KubeClient,
    KubeConfig,
    KubeConfigError,
    KubeError,
    ResourceExpired,
    in_cluster_config,
    kubeconfig_config,
    load_config,
)
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.pods import KubeReplay, load_fixture


def plain(url: str, **kwargs: Any) -> KubeClient:
    return KubeClient(KubeConfig(server=url, source="a test server"), **kwargs)


@pytest.fixture
def replay() -> Iterator[KubeReplay]:
    server = KubeReplay(load_fixture("pods.json"), load_fixture("owners.json"))
    yield server
    server.stop()


# -- GET, list, POST ---------------------------------------------------------------------------------------
def test_get_and_list_answer_the_recorded_objects(replay: KubeReplay) -> None:
    api = plain(replay.url)
    rs = api.get_json("/apis/apps/v1/namespaces/ml/replicasets/llama-8b-7d9f8c6b5")
    assert rs["metadata"]["ownerReferences"][0]["name"] == "llama-8b"
    pods = api.list("/api/v1/pods", {"fieldSelector": "spec.nodeName=gpu-node-1"})
    assert pods.resource_version == "1000"
    assert len(pods.items) == len(load_fixture("pods.json")["items"])
    assert any("fieldSelector=spec.nodeName%3Dgpu-node-1" in r and "limit=100" in r for r in replay.requests)
    api.close()


def test_an_error_status_carries_status_reason_and_a_short_message(replay: KubeReplay) -> None:
    api = plain(replay.url)
    with pytest.raises(KubeApiError) as missing:
        api.get_json("/apis/batch/v1/namespaces/ml/jobs/absent")
    assert missing.value.status == 404 and missing.value.reason == "NotFound"
    replay.list_error = load_fixture("status_forbidden.json")
    with pytest.raises(KubeApiError) as forbidden:
        api.list("/api/v1/pods")
    assert forbidden.value.status == 403 and forbidden.value.reason == "Forbidden"
    assert "HTTP 403 Forbidden: pods is forbidden" in str(forbidden.value)
    assert '"kind"' not in str(forbidden.value), "the Status document itself is never echoed"


def test_a_long_or_odd_error_body_is_never_echoed_whole() -> None:
    message = "x" * 5000 + "\n\x1b[31m"
    status = json.dumps({"kind": "Status", "code": 500, "reason": "Internal Error!", "message": message})
    error = Behaviour(mode="status", status=500, body=status.encode())
    with hostile_server(error) as (url, _), pytest.raises(KubeApiError) as err:
        plain(url).get_json("/api/v1/pods")
    assert err.value.status == 500
    assert err.value.reason == "", "a reason that is not one CamelCase word is dropped"
    assert len(err.value.message) <= MESSAGE_MAX_CHARS and "\x1b" not in err.value.message
    assert len(str(err.value)) < MESSAGE_MAX_CHARS + 100
    page = Behaviour(mode="status", status=502, body=b"<html>" + b"y" * 100_000)
    with hostile_server(page) as (url, _), pytest.raises(KubeApiError) as bad_gateway:
        plain(url).get_json("/api/v1/pods")
    assert str(bad_gateway.value) == "GET /api/v1/pods: HTTP 502"


def test_lists_are_read_page_by_page() -> None:
    pages = {
        "": {"metadata": {"resourceVersion": "77", "continue": "page-2"}, "items": [{"n": 1}, {"n": 2}]},
        "page-2": {"metadata": {"resourceVersion": "77"}, "items": [{"n": 3}]},
    }

    def answer(path: str, _: bytes) -> tuple[int, str, bytes]:
        token = path.split("continue=")[1] if "continue=" in path else ""
        return 200, "application/json", json.dumps(pages[token]).encode()

    with hostile_server(Behaviour(handler=answer)) as (url, seen):
        result = plain(url, page_size=2).list("/api/v1/pods")
    assert [i["n"] for i in result.items] == [1, 2, 3] and result.resource_version == "77"
    assert len(seen.requests) == 2 and "limit=2" in seen.requests[0] and "continue=page-2" in seen.requests[1]


def test_malformed_answers_are_errors_not_crashes() -> None:
    for body in (b"not json", b"[1, 2]", b'{"items": {"a": 1}}', b'{"items": [1]}'):
        peer = Behaviour(body=body, content_type="application/json")
        with hostile_server(peer) as (url, _), pytest.raises(KubeError):
            plain(url).list("/api/v1/pods")


def test_post_sends_json_and_returns_the_created_object() -> None:
    received: list[bytes] = []

    def created(_: str, payload: bytes) -> tuple[int, str, bytes]:
        received.append(payload)
        return 201, "application/json", b'{"kind":"Event","metadata":{"name":"e1"}}'

    with hostile_server(Behaviour(handler=created)) as (url, seen):
        answer = plain(url).post_json("/api/v1/namespaces/ml/events", {"reason": "PowerCapLowered"})
    assert answer["metadata"]["name"] == "e1"
    assert json.loads(received[0]) == {"reason": "PowerCapLowered"}
    assert seen.headers_seen[0]["Content-Type"] == "application/json"


# -- hostile peers -----------------------------------------------------------------------------------------
def test_a_trickling_api_server_costs_one_call_its_deadline() -> None:
    with hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.05)) as (url, _):
        started = time.monotonic()
        with pytest.raises(KubeError, match="within"):
            plain(url, deadline_s=0.5).get_json("/api/v1/pods")
        assert time.monotonic() - started < 0.5 + 1.0


def test_huge_and_bomb_answers_stop_at_the_cap() -> None:
    for mode in ("huge", "gzip_bomb"):
        with hostile_server(Behaviour(mode=mode)) as (url, _), pytest.raises(KubeError, match="larger than"):
            plain(url, max_body_bytes=1024 * 1024).list("/api/v1/pods")


def test_redirects_are_not_followed() -> None:
    with hostile_server(Behaviour(mode="redirect")) as (url, _), pytest.raises(KubeApiError) as err:
        plain(url).get_json("/api/v1/pods")
    assert err.value.status == 302


# -- watch -------------------------------------------------------------------------------------------------
def _collect(api: KubeClient, replay: KubeReplay, **kwargs: Any) -> tuple[list[tuple[str, str]], str]:
    seen: list[tuple[str, str]] = []
    version = api.watch(
        "/api/v1/pods",
        {"resourceVersion": "1000"},
        lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
        **kwargs,
    )
    return seen, version


def test_watch_streams_events_and_returns_the_last_version(replay: KubeReplay) -> None:
    added = load_fixture("pod_added.json")
    replay.push("ADDED", added)
    replay.push("BOOKMARK", load_fixture("bookmark.json"))
    seen, version = _collect(plain(replay.url), replay, timeout_s=5)
    assert seen == [("ADDED", added["metadata"]["name"])]
    assert version == "1200", "a bookmark moves the version without an event"
    watch = next(r for r in replay.requests if "watch=true" in r)
    for part in ("resourceVersion=1000", "timeoutSeconds=5", "allowWatchBookmarks=true"):
        assert part in watch


def test_an_expired_watch_is_resource_expired(replay: KubeReplay) -> None:
    replay.push("ERROR", load_fixture("status_expired.json"))
    with pytest.raises(ResourceExpired) as err:
        _collect(plain(replay.url), replay, timeout_s=5)
    assert err.value.status == 410 and err.value.reason == "Expired"
    assert "too old resource version" in err.value.message


def test_a_watch_that_never_ends_is_ended_by_its_deadline(replay: KubeReplay) -> None:
    replay.watch_hold_s = 60  # the server ignores timeoutSeconds
    replay.push("ADDED", load_fixture("pod_added.json"))
    started = time.monotonic()
    seen, version = _collect(plain(replay.url, watch_grace_s=0.5), replay, timeout_s=1)
    elapsed = time.monotonic() - started
    assert elapsed < 1 + 0.5 + 2.0, f"the watch ran {elapsed:.1f}s past timeoutSeconds + grace"
    assert seen and version == "1001", "what arrived before the deadline counts"


def test_one_enormous_watch_event_stops_at_the_event_cap(replay: KubeReplay) -> None:
    replay.watch_raw = b'{"type":"ADDED","object":{"metadata":{"name":"' + b"x" * (8 * 1024 * 1024)
    with pytest.raises(KubeError, match="larger than 65536 bytes"):
        _collect(plain(replay.url, watch_event_max_bytes=64 * 1024), replay, timeout_s=5)


def test_a_broken_watch_stream_is_an_error(replay: KubeReplay) -> None:
    replay.watch_raw = b"this is not an event\n"
    with pytest.raises(KubeError, match="not JSON"):
        _collect(plain(replay.url), replay, timeout_s=5)
    replay.watch_raw = b'{"type": "ADDED"}\n'
    with pytest.raises(KubeError, match="without type and object"):
        _collect(plain(replay.url), replay, timeout_s=5)


def test_a_refused_watch_carries_the_status() -> None:
    body = (Path(__file__).parents[1] / "fixtures" / "kube" / "status_forbidden.json").read_bytes()
    refused = Behaviour(mode="status", status=403, body=body)
    with hostile_server(refused) as (url, _), pytest.raises(KubeApiError) as err:
        plain(url).watch("/api/v1/pods", {}, lambda *_: None, timeout_s=5)
    assert err.value.status == 403 and err.value.reason == "Forbidden"


def test_an_exception_from_the_callback_ends_the_watch(replay: KubeReplay) -> None:
    class Enough(Exception):
        pass

    def refuse(kind: str, obj: dict[str, Any]) -> None:
        raise Enough

    replay.watch_hold_s = 30
    replay.push("ADDED", load_fixture("pod_added.json"))
    started = time.monotonic()
    with pytest.raises(Enough):
        plain(replay.url).watch("/api/v1/pods", {}, refuse, timeout_s=30)
    assert time.monotonic() - started < 5


# -- configuration -----------------------------------------------------------------------------------------
def _service_account(folder: Path, token: str = "sa-token-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token + "\n")
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return folder


def test_in_cluster_configuration(tmp_path: Path) -> None:
    sa = _service_account(tmp_path / "sa")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = in_cluster_config(env, sa)
    assert config.server == "https://10.96.0.1:443"
    assert config.token_file == sa / "token" and config.ca_file == sa / "ca.crt"
    v6 = in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, sa)
    assert v6.server == "https://[fd00::1]:443"
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster_config({}, sa)
    with pytest.raises(KubeConfigError, match=r"in-cluster service account: no token at .*absent/token"):
        in_cluster_config(env, tmp_path / "absent")


def _kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "contexts": [
            {"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}},
            {"name": "dev", "context": {"cluster": "kind", "user": "admin", "namespace": "ml"}},
        ],
        "clusters": [{"name": "kind", "cluster": cluster}],
        "users": [{"name": "admin", "user": user}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: the file is read as YAML either way.
    path.write_text(json.dumps(doc, indent=1))
    return path


def test_kubeconfig_with_a_token_and_relative_files(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path / "kube" / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.crt"},
        {"token": "abc", "tokenFile": "~/token"},
    )
    config = load_config(path)
    assert config.server == "https://127.0.0.1:6443" and config.source == f"kubeconfig {path}"
    assert config.ca_file == tmp_path / "kube" / "ca.crt", "relative to the kubeconfig's folder"
    assert config.token == "abc" and config.token_file == Path("~/token").expanduser()
    assert "abc" not in repr(config), "secrets stay out of repr"


@pytest.mark.parametrize(
    ("user", "cluster", "named"),
    [
        ({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}, {}, "exec"),
        ({"auth-provider": {"name": "gcp"}}, {}, "auth-provider"),
        ({"username": "admin", "password": "secret"}, {}, "basic auth"),
        ({"token": "t", "as": "someone-else"}, {}, "impersonates"),
        ({"token": "t"}, {"proxy-url": "http://proxy:3128"}, "proxy-url"),
    ],
)
def test_kubeconfig_features_not_supported_are_refused_naming_the_file(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any], named: str
) -> None:
    path = _kubeconfig(tmp_path / "config", {"server": "https://127.0.0.1:6443", **cluster}, user)
    with pytest.raises(KubeConfigError) as err:
        kubeconfig_config(path)
    assert str(path) in str(err.value) and named in str(err.value)
    assert "secret" not in str(err.value)


def test_broken_kubeconfigs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"absent.*cannot read it"):
        kubeconfig_config(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeConfigError, match="not valid YAML"):
        kubeconfig_config(bad)
    path = _kubeconfig(tmp_path / "config", {"server": "https://127.0.0.1:6443"}, {"token": "t"})
    with pytest.raises(KubeConfigError, match="no context named 'missing'"):
        kubeconfig_config(path, context="missing")
    with pytest.raises(KubeConfigError, match="no cluster named 'nowhere'"):
        kubeconfig_config(path, context="other")
    b64 = _kubeconfig(tmp_path / "b64", {"server": "https://h", "certificate-authority-data": "%%%"}, {})
    with pytest.raises(KubeConfigError, match="certificate-authority-data is not valid base64"):
        kubeconfig_config(b64)


def test_the_service_account_token_is_re_read_when_it_rotates(tmp_path: Path) -> None:
    # The kubelet's projected volume: token -> ..data/token, ..data -> a timestamped folder swapped
    # atomically on rotation.
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "v1").mkdir()
    (sa / "v1" / "token").write_text("token-one\n")
    (sa / "..data").symlink_to("v1")
    (sa / "token").symlink_to("..data/token")
    with hostile_server(Behaviour(body=b'{"kind":"Pod"}', content_type="application/json")) as (url, seen):
        api = KubeClient(KubeConfig(server=url, source="test", token_file=sa / "token"))
        api.get_json("/api/v1/pods")
        (sa / "v2").mkdir()
        (sa / "v2" / "token").write_text("token-two\n")
        (sa / "..data_tmp").symlink_to("v2")
        os.replace(sa / "..data_tmp", sa / "..data")
        shutil.rmtree(sa / "v1")
        api.get_json("/api/v1/pods")
        (sa / "..data").unlink()  # mid-swap: no file at all
        api.get_json("/api/v1/pods")
    assert [h.get("Authorization") for h in seen.headers_seen] == [
        "Bearer token-one",
        "Bearer token-two",
        "Bearer token-two",  # the last token, until a new file appears
    ]


# -- TLS: CA and client certificates from a kubeconfig, against a loopback HTTPS API ------------------------
@dataclass(frozen=True)
class Pki:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def b64(self, name: str) -> str:
        return base64.b64encode(self.path(name).read_bytes()).decode()


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a throwaway CA")
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "eo-test-ca")
    _ca(folder, "other-ca")
    _leaf(folder, "apiserver", "eo-test-ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _leaf(folder, "eo-client", "eo-test-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(folder)


@pytest.fixture
def https_api(pki: Pki) -> Iterator[str]:
    """An HTTPS API server that requires a client certificate from the test CA and answers with the
    certificate's common name and the Authorization header it saw."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cert = self.connection.getpeercert()  # type: ignore[attr-defined]
            subject = dict(pair[0] for pair in cert["subject"]) if cert else {}
            body = json.dumps(
                {"user": subject.get("commonName", ""), "auth": self.headers.get("Authorization", "")}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.path("apiserver.crt"), pki.path("apiserver.key"))
    context.load_verify_locations(pki.path("eo-test-ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *_: None  # type: ignore[method-assign]  # refused handshakes are the point
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_certificate_and_ca_as_kubeconfig_data(tmp_path: Path, pki: Pki, https_api: str) -> None:
    path = _kubeconfig(
        tmp_path / "config",
        {"server": https_api, "certificate-authority-data": pki.b64("eo-test-ca.crt")},
        {
            "client-certificate-data": pki.b64("eo-client.crt"),
            "client-key-data": pki.b64("eo-client.key"),
            "token": "and-a-token",
        },
    )
    api = KubeClient(kubeconfig_config(path))
    assert api.get_json("/version") == {"user": "eo-client", "auth": "Bearer and-a-token"}
    api.close()
    assert not list(Path(tempfile.gettempdir()).glob("eo-kube-*")), "no key left on disk"


def test_client_certificate_and_ca_as_kubeconfig_files(tmp_path: Path, pki: Pki, https_api: str) -> None:
    for name in ("eo-test-ca.crt", "eo-client.crt", "eo-client.key"):
        shutil.copy(pki.path(name), tmp_path / name)
    path = _kubeconfig(
        tmp_path / "config",
        {"server": https_api, "certificate-authority": "eo-test-ca.crt"},
        {"client-certificate": "eo-client.crt", "client-key": "eo-client.key"},
    )
    assert KubeClient(kubeconfig_config(path)).get_json("/version")["user"] == "eo-client"


def test_tls_refuses_a_server_outside_the_ca_and_a_missing_client_certificate(
    tmp_path: Path, pki: Pki, https_api: str
) -> None:
    wrong_ca = _kubeconfig(
        tmp_path / "wrong",
        {"server": https_api, "certificate-authority-data": pki.b64("other-ca.crt")},
        {"client-certificate-data": pki.b64("eo-client.crt"), "client-key-data": pki.b64("eo-client.key")},
    )
    with pytest.raises(KubeError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        KubeClient(kubeconfig_config(wrong_ca), deadline_s=5).get_json("/version")
    no_cert = _kubeconfig(
        tmp_path / "nocert",
        {"server": https_api, "certificate-authority-data": pki.b64("eo-test-ca.crt")},
        {"token": "t"},
    )
    with pytest.raises(KubeError):
        KubeClient(kubeconfig_config(no_cert), deadline_s=5).get_json("/version")


def test_an_unloadable_certificate_is_a_configuration_error(tmp_path: Path, pki: Pki) -> None:
    path = _kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": pki.b64("eo-test-ca.crt")},
        {"client-certificate-data": pki.b64("eo-client.crt"), "client-key-data": pki.b64("other-ca.key")},
    )
    with pytest.raises(KubeConfigError, match=rf"kubeconfig {path}: cannot load its TLS certificates"):
        KubeClient(kubeconfig_config(path))
