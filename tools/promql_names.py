"""Extract the metric names a PromQL expression reads, without a full parser.

Good enough for the rules and dashboards of this repository, and checked against a real Prometheus in the
tests: strings, label matchers, ranges, grouping clauses, offsets and numbers are removed first, then
every identifier that is not a function, an aggregation or a keyword is a metric name.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+|@\s*(?:start\(\)|end\(\)|[0-9.]+)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"offset", "inf", "nan", "Inf", "NaN", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (``{__name__=...}`` selectors are not resolved)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name in _KEYWORDS:
            continue
        names.add(name)
    return names
