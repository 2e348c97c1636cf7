"""What an installed package needs ships inside it: a wheel built from the packages alone (the Docker
build context) holds every file of every package, and the installed code finds its data without the
repository (rules, dashboard, promtool suites, the demo's trace excerpt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]


def _tracked(package: str) -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", package],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    # A file deleted in the working tree but not yet committed is not part of the build.
    return {name for name in listed if (REPO / name).is_file()}


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy holding only what docker/Dockerfile copies, unpacked."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        for name in _tracked(package):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(work / "dist"), str(source)],
        check=False, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    target = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_the_wheel_holds_every_file_of_every_package(unpacked_wheel: Path) -> None:
    missing = sorted(
        name for package in PACKAGES for name in _tracked(package) if not (unpacked_wheel / name).is_file()
    )
    assert not missing, f"files in package folders that the wheel leaves out (package-data): {missing}"


def test_rule_files_suites_and_dashboard_are_package_data(unpacked_wheel: Path) -> None:
    shipped = unpacked_wheel / "recording_rules"
    assert {p.name for p in shipped.glob("*.yaml")} >= {"alerts.yaml", "workload.rules.yaml"}
    assert list((shipped / "tests").glob("*_test.yaml"))
    assert (shipped / "dashboards" / "energy-orchestrator.json").is_file()


def test_installed_code_reads_its_data_from_the_package_not_the_repository(
    unpacked_wheel: Path, tmp_path: Path
) -> None:
    # Run from outside the repository with only the unpacked wheel (and the venv's dependencies) on the
    # path: -I ignores PYTHONPATH and the current folder, so the script puts the wheel first itself.
    script = f"""
import sys
sys.path.insert(0, {str(unpacked_wheel)!r})
from pathlib import Path
import demo.data, demo.rules, recording_rules
site = Path({str(unpacked_wheel)!r})
written = demo.rules.write_compressed_rules(Path({str(tmp_path / "rules")!r}), 10, 4)
assert {{p.name for p in written}} >= {{"alerts.yaml", "workload.rules.yaml"}}, written
for resource in (*recording_rules.rule_files(), recording_rules.dashboard(), demo.data.conversation_trace_excerpt()):
    assert Path(str(resource)).is_relative_to(site), resource
    assert Path(str(resource)).stat().st_size > 0, resource
print("ok", len(written))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")
