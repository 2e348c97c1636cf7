"""Regenerate the committed gRPC code (``scaler/externalscaler_pb2*.py``) from ``proto/``.

``-Iscaler=proto`` maps the proto folder onto the ``scaler`` package, so the generated ``_pb2_grpc``
module imports ``from scaler import externalscaler_pb2`` and works from any working directory.
Run ``make proto`` (or ``python -m scaler.proto_gen [--out DIR]``); a test regenerates into a temporary
folder and checks that the committed files are identical.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto" / "externalscaler.proto"
GENERATED = ("externalscaler_pb2.py", "externalscaler_pb2.pyi", "externalscaler_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated files under ``out_root/scaler/`` and return their paths."""
    (out_root / "scaler").mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{well_known}",
        f"-Iscaler={PROTO.parent}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"scaler/{PROTO.name}",
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return [out_root / "scaler" / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO, help="root folder to write scaler/... into")
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
