"""The demo's notification path, all real: Prometheus evaluates the project's own alert rules, sends the
firing alert to a real Alertmanager, which delivers it to the demo's loopback webhook receiver."""

from __future__ import annotations

import time
from pathlib import Path

from demo.alert_receiver import DeliveredAlert, WebhookReceiver
from demo.prometheus import Alertmanager, Prometheus
from demo.rules import write_compressed_rules


def test_a_firing_project_alert_reaches_the_webhook_receiver(tmp_path: Path) -> None:
    printed: list[DeliveredAlert] = []
    # EoExporterAbsent fires when no exporter target exists, which is the case here; compressed 90x its
    # 15-minute `for:` is 10 s, long enough for Prometheus to discover the Alertmanager first (a firing
    # alert with no Alertmanager known yet is dropped and only re-sent a minute later).
    rules = write_compressed_rules(tmp_path / "rules", factor=90, min_window_s=1)
    with (
        WebhookReceiver(printed.append) as receiver,
        Alertmanager(webhook_url=receiver.url) as alertmanager,
    ):
        alertmanager.start()
        with Prometheus(
            scrape_interval_s=1.0, rule_files=rules, alertmanager_url=alertmanager.url
        ) as prometheus:
            prometheus.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(a.name == "EoExporterAbsent" for a in printed):
                time.sleep(0.2)
    absent = [a for a in receiver.delivered() if a.name == "EoExporterAbsent"]
    assert absent, f"not delivered within 60 s; delivered: {receiver.delivered()}"
    alert = absent[0]
    assert (alert.severity, alert.status) == ("critical", "firing")
    assert alert.summary == "Prometheus has no eo-exporter target."
    assert printed[: len(receiver.delivered())] == receiver.delivered(), "each delivery reaches the callback"
    assert "EoExporterAbsent (critical, firing): Prometheus has no eo-exporter target." in alert.line()


def test_without_a_webhook_alertmanager_keeps_its_no_op_receiver() -> None:
    config = Alertmanager().config()
    assert config["receivers"] == [{"name": "null"}]
    assert config["route"]["receiver"] == "null"
