"""Energy Orchestrator's Prometheus side, shipped inside the package as data.

- ``*.yaml``: the recording rules and alerts, the single source of truth (the PrometheusRule in
  ``manifests/base`` is generated from them);
- ``tests/*.yaml``: their ``promtool test rules`` suites (rule files named relative to the suite);
- ``dashboards/energy-orchestrator.json``: the Grafana dashboard, which reads only these records and the
  components' own metrics.

Everything is read through ``importlib.resources``, so an installed wheel or the container image finds
the files without a repository checkout.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

DASHBOARD_NAME = "energy-orchestrator.json"


def _package() -> Traversable:
    return files(__name__)


def _yaml_files(folder: Traversable) -> list[Traversable]:
    return sorted(
        (f for f in folder.iterdir() if f.is_file() and f.name.endswith(".yaml")), key=lambda f: f.name
    )


def rule_files() -> list[Traversable]:
    """The rule files, sorted by name (a stable order for generated manifests)."""
    return _yaml_files(_package())


def promtool_suites() -> list[Traversable]:
    """The ``promtool test rules`` suites; each names its rule files as ``../<file>``."""
    return _yaml_files(_package() / "tests")


def dashboard() -> Traversable:
    """The Grafana dashboard JSON."""
    return _package() / "dashboards" / DASHBOARD_NAME
