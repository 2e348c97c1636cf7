"""The project's recording rules and alerts with time compressed, so a few-minute demo shows them work.

The rule files stay the single source of truth: this module loads them from the installed package
``recording_rules`` (package data, so no repository checkout is needed), divides every range-vector
window, ``offset`` and alert ``for:`` by ``factor`` (never below ``min_window_s``, so a rate still
spans several scrapes) and writes the result to a temporary folder for the demo's Prometheus. Record
names are unchanged (``...:rate5m`` then means "5 demo-minutes"), so the scaler and the dashboard read
the same names as on a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

import recording_rules

_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|[smhdwy])")
_RANGE = re.compile(r"\[(\d+(?:ms|[smhdwy]))(:(\d+(?:ms|[smhdwy]))?)?\]")
_OFFSET = re.compile(r"\boffset\s+(\d+(?:ms|[smhdwy]))")


def duration_s(text: str) -> float:
    """Seconds in a Prometheus duration such as ``5m`` or ``1h30m``."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def _fmt(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def compress_expr(expr: str, factor: float, min_window_s: float) -> str:
    """Divide the windows, subquery steps and offsets of one PromQL expression by ``factor``."""

    def window(text: str) -> str:
        return _fmt(max(duration_s(text) / factor, min_window_s))

    def ranges(m: re.Match[str]) -> str:
        out = "[" + window(m.group(1))
        if m.group(2) is not None:
            out += ":" + (window(m.group(3)) if m.group(3) else "")
        return out + "]"

    expr = _RANGE.sub(ranges, expr)
    return _OFFSET.sub(lambda m: "offset " + _fmt(duration_s(m.group(1)) / factor), expr)


def compress_group(group: dict[str, Any], factor: float, min_window_s: float) -> dict[str, Any]:
    rules = []
    for original in group.get("rules", []):
        rule = dict(original)
        rule["expr"] = compress_expr(str(rule["expr"]), factor, min_window_s)
        if "for" in rule:
            rule["for"] = _fmt(duration_s(str(rule["for"])) / factor)
        if "annotations" in rule:
            rule["annotations"] = {
                k: compress_expr(v, factor, min_window_s) for k, v in rule["annotations"].items()
            }
        rules.append(rule)
    return {**group, "rules": rules}


def write_compressed_rules(out_dir: Path, factor: float, min_window_s: float) -> list[Path]:
    """Write the package's rule files to ``out_dir`` compressed by ``factor``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in recording_rules.rule_files():
        doc = yaml.safe_load(path.read_text())
        groups = [compress_group(g, factor, min_window_s) for g in doc.get("groups", [])]
        target = out_dir / path.name
        target.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        written.append(target)
    return written
