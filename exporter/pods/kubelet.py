"""Thin client for the kubelet's PodResources v1 API (``List``) on its unix socket.

The kubelet serves it at ``/var/lib/kubelet/pod-resources/kubelet.sock``; the DaemonSet mounts that
directory read-only. No RBAC is involved: access is controlled by the socket's file permissions.
"""

from __future__ import annotations

import grpc

from exporter.podresources import api_pb2, api_pb2_grpc
from exporter.pods.devices import Allocation

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


class PodResourcesUnavailable(RuntimeError):
    """The kubelet's PodResources API could not be read (socket missing, permission, kubelet down)."""


class PodResourcesClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 2.0) -> None:
        self._socket_path = socket_path
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)

    def list(self) -> list[Allocation]:
        """Every device ID allocated to a container on this node."""
        try:
            response = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise PodResourcesUnavailable(
                f"kubelet PodResources API at {self._socket_path}: {code} {detail}"
            ) from exc
        return [
            Allocation(pod.namespace, pod.name, container.name, devices.resource_name, device_id)
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            for device_id in devices.device_ids
        ]

    def close(self) -> None:
        self._channel.close()
