"""The committed gRPC code is what `make proto` generates, and the proto matches KEDA's wire format."""

from __future__ import annotations

from pathlib import Path

from scaler import externalscaler_pb2 as pb
from scaler.proto_gen import GENERATED, REPO, generate


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    for path in generate(tmp_path):
        committed = REPO / "scaler" / path.name
        assert path.read_bytes() == committed.read_bytes(), f"{committed} is stale: run `make proto`"
    assert {p.name for p in (tmp_path / "scaler").iterdir()} == set(GENERATED)


def test_wire_contract_matches_keda() -> None:
    """Package, service, methods and every field number as in kedacore/keda's externalscaler.proto."""
    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
    assert methods == {
        "IsActive": ("ScaledObjectRef", "IsActiveResponse", False),
        "StreamIsActive": ("ScaledObjectRef", "IsActiveResponse", True),
        "GetMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", False),
        "GetMetrics": ("GetMetricsRequest", "GetMetricsResponse", False),
        "StreamMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", True),
    }
    fields = {
        m.name: {f.name: (f.number, f.type) for f in m.fields}
        for m in pb.DESCRIPTOR.message_types_by_name.values()
    }
    t = pb.DESCRIPTOR.message_types_by_name["MetricSpec"].fields_by_name
    string, int64, double, boolean, message = (
        t["metricName"].type,
        t["targetSize"].type,
        t["targetSizeFloat"].type,
        pb.DESCRIPTOR.message_types_by_name["IsActiveResponse"].fields_by_name["result"].type,
        pb.DESCRIPTOR.message_types_by_name["GetMetricsRequest"].fields_by_name["scaledObjectRef"].type,
    )
    assert fields["ScaledObjectRef"]["name"] == (1, string)
    assert fields["ScaledObjectRef"]["namespace"] == (2, string)
    assert fields["ScaledObjectRef"]["scalerMetadata"][0] == 3
    assert fields["IsActiveResponse"] == {"result": (1, boolean)}
    assert fields["GetMetricSpecResponse"] == {"metricSpecs": (1, message)}
    assert fields["MetricSpec"] == {
        "metricName": (1, string),
        "targetSize": (2, int64),
        "targetSizeFloat": (3, double),
    }
    assert fields["GetMetricsRequest"] == {"scaledObjectRef": (1, message), "metricName": (2, string)}
    assert fields["GetMetricsResponse"] == {"metricValues": (1, message)}
    assert fields["MetricValue"] == {
        "metricName": (1, string),
        "metricValue": (2, int64),
        "metricValueFloat": (3, double),
    }
    assert pb.DESCRIPTOR.package == "externalscaler"
    assert (int64, double) == (3, 1)  # FieldDescriptor.TYPE_INT64, TYPE_DOUBLE
