"""Regenerate ``exporter/podresources/api_pb2*.py`` from ``proto/podresources/api.proto``.

The include path maps ``exporter/podresources`` onto ``proto/podresources``, so the generated
``api_pb2_grpc.py`` imports ``exporter.podresources.api_pb2`` (package-correct, no sys.path tricks).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto" / "podresources"
PACKAGE_DIR = "exporter/podresources"


def generate(out_dir: Path = REPO) -> list[Path]:
    """Write the generated files under ``out_dir`` (the repository root by default) and list them."""
    from grpc_tools import protoc  # noqa: PLC0415 (only needed when regenerating)

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_DIR}={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"{PACKAGE_DIR}/api.proto",
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return sorted((out_dir / PACKAGE_DIR).glob("api_pb2*"))


def main() -> int:
    for path in generate():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
