"""Build and run the gRPC server in-process: ``start_scaler(settings, kpi_source=...) -> ScalerHandle``.

The handle has ``.port`` (gRPC), ``.metrics_port`` (HTTP ``/metrics`` and ``/healthz``, served by
``common.metrics_server``) and ``.stop(grace_s)``, which flips gRPC health to NOT_SERVING (and
``/healthz`` to 503) before stopping so load balancers and probes drain first. Health
(``grpc.health.v1``) and reflection are registered. TLS is on when a certificate and key are given;
with a client CA, clients must present a certificate it signed (mutual TLS).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.metrics_server import MetricsServerHandle, registry_renderer, serve_metrics
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.kpi_source import CachedKpiSource, KpiSource, PrometheusKpiSource
from scaler.service import ExternalScalerService
from scaler.settings import ScalerSettings
from scaler.telemetry import ScalerMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExternalScaler"].full_name


@dataclass
class ScalerHandle:
    port: int
    metrics_port: int
    server: grpc.Server
    health: health.HealthServicer
    metrics: ScalerMetrics
    kpi_source: KpiSource
    _shutdown: threading.Event
    _http: MetricsServerHandle
    health_port: int | None = None
    _health_server: grpc.Server | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace_s: float | None = 5.0) -> None:
        """NOT_SERVING first, end the streams, then stop accepting and wait up to ``grace_s``."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self._shutdown.set()
        self.server.stop(grace_s).wait()
        if self._health_server is not None:
            self._health_server.stop(None)
        self._http.stop()
        close = getattr(self.kpi_source, "close", None)
        if callable(close):
            close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _credentials(settings: ScalerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def default_kpi_source(settings: ScalerSettings, metrics: ScalerMetrics) -> CachedKpiSource:
    prometheus = PrometheusKpiSource(settings.prometheus, metrics)
    return CachedKpiSource(
        prometheus,
        key=prometheus.cache_key,
        ttl_s=settings.cache_ttl_s,
        serve_stale_s=settings.cache_serve_stale_s,
        metrics=metrics,
        # A waiter waits no longer than one poll's queries may take.
        wait_timeout_s=settings.prometheus.timeout_s,
    )


def start_scaler(
    settings: ScalerSettings,
    kpi_source: KpiSource | None = None,
    metrics: ScalerMetrics | None = None,
) -> ScalerHandle:
    """Start the gRPC server and its ``/metrics`` endpoint; ``kpi_source`` defaults to cached Prometheus."""
    metrics = metrics or ScalerMetrics()
    source = kpi_source if kpi_source is not None else default_kpi_source(settings, metrics)
    shutdown = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="eo-grpc")
    )
    service = ExternalScalerService(
        source, metrics, stream_interval_s=settings.stream_interval_s, shutdown=shutdown
    )
    pb_grpc.add_ExternalScalerServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.listen_address}:{settings.port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC on {address}")
    health_server, health_port = _start_health_server(settings, health_servicer)
    stopped = threading.Event()
    http = serve_metrics(
        registry_renderer(metrics.registry),
        lambda: _http_health(stopped),
        address=settings.metrics_address,
        port=settings.metrics_port,
        name="eo-scaler",
    )
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "eo-scaler serving gRPC on %s:%d (tls=%s), metrics on :%d",
        settings.listen_address,
        port,
        credentials is not None,
        http.port,
    )
    return ScalerHandle(
        port=port,
        metrics_port=http.port,
        server=server,
        health=health_servicer,
        metrics=metrics,
        kpi_source=source,
        _shutdown=shutdown,
        _http=http,
        health_port=health_port,
        _health_server=health_server,
        _stopped=stopped,
    )


def _http_health(stopped: threading.Event) -> tuple[bool, str]:
    """``/healthz``: 200 while serving, 503 from the moment ``stop()`` flips gRPC health to NOT_SERVING."""
    return (False, "stopping\n") if stopped.is_set() else (True, "ok\n")


def _start_health_server(
    settings: ScalerSettings, servicer: health.HealthServicer
) -> tuple[grpc.Server | None, int | None]:
    """A plaintext server with the health service only (the same servicer, so NOT_SERVING shows there
    too): the kubelet's grpc probe cannot do TLS, and the scaler itself must not be served in clear."""
    if settings.health_port is None:
        return None, None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="eo-health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{settings.listen_address}:{settings.health_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC health port on {address}")
    server.start()
    log.info("gRPC health (plaintext, health service only) on %s:%d", settings.listen_address, port)
    return server, port
