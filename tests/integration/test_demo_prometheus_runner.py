"""The loopback Prometheus and Alertmanager runner the demo and other integration tests stand on."""

from __future__ import annotations

from demo.prometheus import Alertmanager, Prometheus


def test_prometheus_scrapes_itself_and_answers_queries() -> None:
    prom = Prometheus(scrape_interval_s=0.5)
    prom.targets = [f"127.0.0.1:{prom.port}"]
    with prom.start():
        result = prom.wait_for('up{job="eo"} == 1', timeout_s=20)
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{prom.port}"
    assert not prom.workdir.exists()


def test_alertmanager_starts_and_lists_no_alerts() -> None:
    with Alertmanager().start() as am:
        assert am.alerts() == []
