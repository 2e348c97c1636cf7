"""The demo's webhook receiver reads Alertmanager's webhook body and refuses anything else, over a real
loopback HTTP connection."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from demo.alert_receiver import MAX_BODY_BYTES, DeliveredAlert, WebhookReceiver, parse_webhook

BODY = {
    "version": "4",
    "status": "firing",
    "receiver": "webhook",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "EoLatencySLOBreach", "severity": "critical", "workload": "llama"},
            "annotations": {"summary": "demo/llama p95 latency is above its SLO."},
        }
    ],
}


# The receiver refused the body by closing the connection before the client had written all of it.
CLOSED_MID_BODY = -1


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        # A 413 sent before the body is read races the client's write: the client may see the close
        # (a broken pipe or a reset) instead of the answer. Either is a refusal.
        if isinstance(err.reason, (BrokenPipeError, ConnectionResetError)):
            return CLOSED_MID_BODY
        raise


def test_parse_webhook_reads_name_severity_status_and_summary() -> None:
    (alert,) = parse_webhook(json.dumps(BODY).encode())
    assert alert == DeliveredAlert(
        "EoLatencySLOBreach", "critical", "firing", "demo/llama p95 latency is above its SLO."
    )


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"alerts": {}}', b'{"alerts": [{"labels": {}}]}', b"\xff\xfe"]
)
def test_parse_webhook_refuses_what_is_not_an_alertmanager_body(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_webhook(body)


def test_a_delivery_over_http_reaches_the_callback_and_the_record() -> None:
    seen: list[DeliveredAlert] = []
    with WebhookReceiver(seen.append) as receiver:
        assert _post(receiver.url, json.dumps(BODY).encode()) == 200
        assert [a.name for a in receiver.delivered()] == ["EoLatencySLOBreach"]
    assert seen == receiver.delivered()


def test_bad_and_oversized_bodies_are_refused_and_recorded_as_nothing() -> None:
    def broken(_alert: DeliveredAlert) -> None:
        raise OSError("terminal gone")

    with WebhookReceiver(broken) as receiver:
        assert _post(receiver.url, b"garbage") == 400
        assert _post(receiver.url, b" " * (MAX_BODY_BYTES + 1)) in (413, CLOSED_MID_BODY)
        assert receiver.delivered() == []
        # A callback that fails does not fail the delivery.
        assert _post(receiver.url, json.dumps(BODY).encode()) == 200
        assert len(receiver.delivered()) == 1
