"""The cold-start bridge's source against a real Prometheus scraping what eo-scaler and
kube-state-metrics publish: scaling up, not scaling up, advisory mode and an unknown workload."""

from __future__ import annotations

import time
from collections.abc import Callable

from powercap.scaleup import ScaleUpSource, default_query
from tests.support.fixtures import StartPrometheus
from tests.support.powercap import TextServer

NS, WL = "inference", "llama-chat"


def page(desired: int, current: int, mode: str = "enforce", spec: int = 2, available: int = 2) -> str:
    sel = f'namespace="{NS}",workload="{WL}"'
    other = 'namespace="inference",workload="other"'
    return (
        "\n".join(
            [
                "# TYPE eo_scaler_desired_replicas gauge",
                f"eo_scaler_desired_replicas{{{sel}}} {desired}",
                f"eo_scaler_desired_replicas{{{other}}} 9",
                "# TYPE eo_scaler_current_replicas gauge",
                f"eo_scaler_current_replicas{{{sel}}} {current}",
                f"eo_scaler_current_replicas{{{other}}} 1",
                "# TYPE eo_scaler_mode_info gauge",
                f'eo_scaler_mode_info{{{sel},mode="enforce"}} {1 if mode == "enforce" else 0}',
                f'eo_scaler_mode_info{{{sel},mode="advisory"}} {1 if mode == "advisory" else 0}',
                "# TYPE kube_deployment_spec_replicas gauge",
                f'kube_deployment_spec_replicas{{namespace="{NS}",deployment="{WL}"}} {spec}',
                "# TYPE kube_deployment_status_replicas_available gauge",
                f'kube_deployment_status_replicas_available{{namespace="{NS}",deployment="{WL}"}} {available}',
            ]
        )
        + "\n"
    )


def eventually(read: Callable[[], object], expected: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    assert value == expected


def test_scaling_up_is_read_from_what_eo_scaler_and_kube_state_metrics_publish(
    start_prometheus: StartPrometheus,
) -> None:
    exporter = TextServer(page(desired=3, current=1))
    try:
        prom = start_prometheus(targets=[f"127.0.0.1:{exporter.port}"], scrape_interval_s=0.5)
        scaler_query = default_query("scaler", NS, WL)
        kube_query = default_query("kube-state-metrics", NS, WL)
        assert scaler_query is not None and kube_query is not None
        scaler = ScaleUpSource(prom.url, scaler_query, timeout_s=2.0)
        kube = ScaleUpSource(prom.url, kube_query, timeout_s=2.0)
        eventually(scaler.read, True)  # desired 3 above current 1; the other workload's 9 is not ours
        eventually(kube.read, False)  # the Deployment's spec 2, available 2
        exporter.body = page(desired=3, current=3, spec=4, available=2)
        eventually(scaler.read, False)
        eventually(kube.read, True)
        # In advisory mode eo-scaler's desired count is applied by nobody: unknown, no bridge.
        exporter.body = page(desired=5, current=3, mode="advisory")
        eventually(scaler.read, None)
        # A workload Prometheus knows nothing of: unknown.
        missing = default_query("scaler", NS, "not-there")
        assert missing is not None
        assert ScaleUpSource(prom.url, missing, timeout_s=2.0).read() is None
    finally:
        exporter.stop()
