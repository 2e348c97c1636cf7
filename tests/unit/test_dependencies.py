"""pyproject's runtime dependencies are exactly what the binaries' packages import; the extras hold the
rest (plotting, the demo, code generation and tests), and the binaries start without any extra."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME_PACKAGES = (
    "common",
    "devices",
    "exporter",
    "scaler",
    "powercap",
    "nodeagent",
    "gpumodel",
    "sim",
    "recording_rules",
)
LOCAL = {*RUNTIME_PACKAGES, "demo", "tools", "tests", "bench"}
# Modules inside the runtime packages that need an extra, and which: they are never imported by a
# binary unless that extra's feature is asked for.
NEEDS_EXTRA = {
    "sim/plot.py": "plot",  # imports matplotlib only when a plot is asked for
    "scaler/proto_gen.py": "dev",  # `make proto`
    "exporter/podresources/gen.py": "dev",  # `make proto`
}


def _imported_distributions(paths: list[Path]) -> dict[str, str]:
    """Distribution (canonical name) -> one file importing it, for third-party imports of ``paths``."""
    by_module = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL or top == "__future__":
                    continue
                dists = by_module.get(top)
                assert dists, (
                    f"{path.relative_to(REPO)} imports {top}, which no installed distribution provides"
                )
                found.setdefault(canonicalize_name(dists[0]), str(path.relative_to(REPO)))
    return found


def _declared(requirements: list[str]) -> set[str]:
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    return names - {canonicalize_name(PROJECT["name"])}  # an extra that includes another extra


def _files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def _runtime_files() -> list[Path]:
    return [p for p in _files(*RUNTIME_PACKAGES) if str(p.relative_to(REPO)) not in NEEDS_EXTRA]


EXTRAS = PROJECT["optional-dependencies"]
RUNTIME = _declared(PROJECT["dependencies"])


def test_runtime_dependencies_are_exactly_what_the_runtime_packages_import() -> None:
    imported = _imported_distributions(_runtime_files())
    undeclared = {d: f for d, f in imported.items() if d not in RUNTIME}
    unused = sorted(RUNTIME - set(imported))
    assert not undeclared, f"imported but not a runtime dependency: {undeclared}"
    assert not unused, f"runtime dependencies nothing in {RUNTIME_PACKAGES} imports (an extra?): {unused}"


def test_modules_that_need_an_extra_import_only_the_runtime_and_that_extra() -> None:
    for name, extra in NEEDS_EXTRA.items():
        imported = _imported_distributions([REPO / name])
        allowed = RUNTIME | _declared(EXTRAS[extra])
        assert set(imported) <= allowed, f"{name}: {sorted(set(imported) - allowed)} not in [{extra}]"
        assert set(imported) - RUNTIME, f"{name} needs nothing of [{extra}]: drop it from NEEDS_EXTRA"


def test_the_demo_needs_the_runtime_and_the_demo_extra() -> None:
    imported = set(_imported_distributions(_files("demo")))
    allowed = RUNTIME | _declared(EXTRAS["demo"]) | _declared(EXTRAS["plot"])
    assert imported <= allowed, f"the demo imports {sorted(imported - allowed)} outside [demo]"
    assert "energy-orchestrator[plot]" in EXTRAS["demo"] and "energy-orchestrator[demo]" in EXTRAS["dev"]


def test_heavy_and_build_only_packages_are_not_runtime_dependencies() -> None:
    # The kubernetes client library (and what it pulls in) is 126 MB: common/kube.py replaces it.
    assert {"matplotlib", "grpcio-tools", "numpy", "kubernetes"}.isdisjoint(RUNTIME)


def test_the_binaries_start_without_any_extra() -> None:
    scripts = PROJECT["scripts"]
    assert set(scripts) == {"eo-exporter", "eo-scaler", "eo-powercap", "eo-node-agent", "eo-sim"}
    blocked = ["matplotlib", "grpc_tools", "numpy", "PIL", "kubernetes", "requests"]
    modules = sorted({target.split(":")[0] for target in scripts.values()})
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)  # import of these now fails
        + "".join(f"import {m}\n" for m in modules)
        + "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
