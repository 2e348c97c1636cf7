"""TLS and mutual TLS with certificates made in the test (openssl CLI), and the real process's SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.settings import from_values
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.metadata import TriggerConfig
from scaler.policy import Observation
from scaler.server import start_scaler
from scaler.settings import ScalerSettings

META = {"workload": "llama", "latencySloSeconds": "2", "replicaCapacityRps": "10"}


class StaticKpis:
    def observe(self, trigger: TriggerConfig) -> Observation:
        return Observation(current_replicas=1, load_rps=20.0, peak_load_rps=20.0, latency_s=0.5)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (needed to make test certificates)")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=eo-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extfile in (("server", ext), ("client", None)):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN=eo-{name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        sign = [
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            str(d / f"{name}.crt"),
        ]
        _openssl(*sign, *(["-extfile", str(extfile)] if extfile else []))
    return d


def _settings(pki: Path, client_ca: bool, **values: object) -> ScalerSettings:
    base = {
        "listen_address": "127.0.0.1",
        "port": 0,
        "metrics_address": "127.0.0.1",
        "metrics_port": 0,
        "tls_cert_file": pki / "server.crt",
        "tls_key_file": pki / "server.key",
        "tls_client_ca_file": pki / "ca.crt" if client_ca else None,
    }
    return from_values(ScalerSettings, {**base, **values}, environ={})


def _call(port: int, creds: grpc.ChannelCredentials) -> float:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(name="x", namespace="ns", scalerMetadata=META)
        return (
            stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5)
            .metricValues[0]
            .metricValueFloat
        )


def test_tls_server(pki: Path) -> None:
    handle = start_scaler(_settings(pki, client_ca=False), kpi_source=StaticKpis())
    try:
        ca = (pki / "ca.crt").read_bytes()
        assert (
            _call(handle.port, grpc.ssl_channel_credentials(root_certificates=ca)) == 2.0
        )  # ceil(20 rps / 10 per replica)
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel, pytest.raises(grpc.RpcError):
            pb_grpc.ExternalScalerStub(channel).IsActive(pb.ScaledObjectRef(scalerMetadata=META), timeout=2)
    finally:
        handle.stop(0.5)


def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    handle = start_scaler(_settings(pki, client_ca=True), kpi_source=StaticKpis())
    try:
        ca = (pki / "ca.crt").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes(),
        )
        assert _call(handle.port, with_cert) == 2.0  # ceil(20 rps / 10 per replica)
        with pytest.raises(grpc.RpcError) as info:
            _call(handle.port, grpc.ssl_channel_credentials(root_certificates=ca))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        handle.stop(0.5)


def test_plaintext_health_port_serves_health_only(pki: Path) -> None:
    handle = start_scaler(_settings(pki, client_ca=True, health_port=0), kpi_source=StaticKpis())
    try:
        assert handle.health_port is not None and handle.health_port != handle.port
        with grpc.insecure_channel(f"127.0.0.1:{handle.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1  # SERVING
            with pytest.raises(grpc.RpcError) as info:  # the scaler itself is never served in clear
                pb_grpc.ExternalScalerStub(channel).IsActive(
                    pb.ScaledObjectRef(scalerMetadata=META), timeout=2
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            handle.health.enter_graceful_shutdown()  # what stop() does first
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 2  # NOT_SERVING
    finally:
        handle.stop(0.5)


def test_health_port_must_differ_from_the_grpc_port(pki: Path) -> None:
    with pytest.raises(ValueError, match="--health-port"):
        ScalerSettings(port=6000, health_port=6000)


def test_sigterm_goes_not_serving_and_exits_zero(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EO_PORT": "0",
        "EO_METRICS_PORT": "0",
        "EO_LISTEN_ADDRESS": "127.0.0.1",
        "EO_METRICS_ADDRESS": "127.0.0.1",
        "EO_GRACE_SECONDS": "1",
        "EO_LOG_FORMAT": "json",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "scaler.server_main", "--prometheus-url", "http://127.0.0.1:1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _drive_and_terminate(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _drive_and_terminate(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line.startswith("eo-scaler listening"), line
    port = int(line.split("grpc=")[1].split()[0])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        ref = pb.ScaledObjectRef(name="x", namespace="ns", scalerMetadata=META)
        with pytest.raises(grpc.RpcError) as info:  # Prometheus unreachable: UNAVAILABLE, not a number
            pb_grpc.ExternalScalerStub(channel).GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - start < 5
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    # The one JSON layout of every binary (common.logs).
    assert lines and all(set(line) >= {"time", "level", "logger", "message"} for line in lines)
    assert any(line["message"].startswith("received SIGTERM") for line in lines)


def test_cli_errors_are_messages_not_tracebacks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scaler.server_main", "--tls-cert-file", "/nonexistent.crt"],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        env={**os.environ, "EO_PORT": "0"},
    )
    assert result.returncode == 2
    assert "--tls-cert-file" in result.stderr and "Traceback" not in result.stderr
    bad_env = subprocess.run(
        [sys.executable, "-m", "scaler.server_main"],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        env={**os.environ, "EO_PORT": "six"},
    )
    assert bad_env.returncode == 2 and "EO_PORT" in bad_env.stderr and "Traceback" not in bad_env.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "scaler.server_main", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    assert "EO_PROMETHEUS_URL" in help_text and "--tls-client-ca-file" in help_text
