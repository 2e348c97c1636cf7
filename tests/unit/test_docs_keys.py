"""The trigger-metadata tables in README.md and docs/scaler.md list exactly the keys the parser takes."""

from __future__ import annotations

import re

import pytest

from scaler.metadata import KEDA_KEYS, KNOWN_KEYS
from tests.conftest import REPO

# Accepted spellings that the tables document on another key's row.
ALIASES = {"headroom"}


def _table_keys(text: str) -> set[str]:
    """Backquoted keys in the first column of the table whose header row starts with ``| key |``."""
    table = text[text.index("| key | default | meaning |") :]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1])
    return {key for row in rows for key in re.findall(r"`([A-Za-z]+)`", row)}


@pytest.mark.parametrize("doc", ["README.md", "docs/scaler.md"])
def test_metadata_tables_match_the_parser(doc: str) -> None:
    documented = _table_keys((REPO / doc).read_text())
    ours = KNOWN_KEYS - KEDA_KEYS  # KEDA's own keys (scalerAddress, TLS) are KEDA's to document
    parsed = ours - ALIASES
    assert parsed - documented == set(), f"{doc} misses keys the scaler accepts"
    assert documented - ours == set(), f"{doc} documents keys the scaler rejects"
