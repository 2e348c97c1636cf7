"""The demo's embedded trace excerpt (README.md here says what it is), shipped as package data."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONVERSATION_TRACE_EXCERPT = "azure_llm_2023_conv_first8000.csv"


def conversation_trace_excerpt() -> Path:
    """The excerpt's path inside the installed package.

    A path, not only a resource, because the trace reader opens files by path; pip installs packages as
    plain folders, so the resource always is one.
    """
    resource = files(__name__) / CONVERSATION_TRACE_EXCERPT
    if not isinstance(resource, Path):
        raise RuntimeError(f"{__name__} is not installed as a folder; cannot open {resource}")
    return resource
