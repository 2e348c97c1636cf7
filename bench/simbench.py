"""What the simulator's benches (bench/policy.py, bench/governor.py) share: the traces by label, and
their tables, aligned for a terminal or as Markdown (docs/simulator.md, docs/powercap.md).

Labels: ``conv x1``, ``code x8`` (an Azure trace at native speed or compressed that many times),
or the name of a synthetic trace of sim/synth.py (``diurnal-bursts``, ``long-context``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from sim.synth import synthetic_trace
from sim.trace import Trace, compress, load_trace

TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "traces"
CANDIDATES = [TRACES, Path("/work/shared/data/traces"), Path.cwd().parent / "shared" / "data" / "traces"]
LABELS = ("conv x1", "conv x8", "code x1", "code x8", "diurnal-bursts", "long-context")
"""Every trace the policy bench replays, in its order."""


def find(name: str) -> Path:
    """The trace file ``name`` in the first folder that has it; the bench stops saying where it looked."""
    for base in CANDIDATES:
        if (base / name).is_file():
            return base / name
    sys.exit(f"{sys.argv[0]}: {name} not found in {', '.join(map(str, CANDIDATES))}")


@functools.cache
def _azure(name: str) -> Trace:
    # Read once per run: the native-speed and the compressed runs share it.
    return load_trace(find(f"azure_llm_2023_{name}.csv"))


def trace(label: str) -> Trace:
    """The trace a label names (see the module docstring)."""
    if label.startswith(("conv", "code")):
        name, speed = label.split(" x")
        base = _azure(name)
        return base if speed == "1" else compress(base, float(speed))
    return synthetic_trace(label)


def print_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    markdown: bool,
    align: Literal["left", "right"] = "left",
) -> None:
    """``body`` under ``header``: Markdown, or columns padded to their widest cell."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in body:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for row in [header, *body]:
        cells = (c.ljust(w) if align == "left" else c.rjust(w) for c, w in zip(row, widths, strict=True))
        print("  ".join(cells))
