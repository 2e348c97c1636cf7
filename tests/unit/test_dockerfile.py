"""docker/Dockerfile, checked statically (no Docker daemon here): pinned base, non-root user, the console
scripts the manifests run, constraints that pin every runtime dependency within pyproject's ranges."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


STEPS = instructions(DOCKERFILE.read_text())


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in STEPS if i == "ARG" and "=" in a)


def test_every_stage_uses_a_pinned_python_311_slim_base() -> None:
    froms = [a.split()[0] for i, a in STEPS if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a runtime stage without the build tools"
    for written in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: _args()[m.group(1)], written)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_the_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    last_from = max(n for n, (i, _) in enumerate(STEPS) if i == "FROM")
    users = [a for i, a in STEPS[last_from:] if i == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only verify a numeric UID"
    assert "10001" in uid, "the manifests' runAsUser"


def test_the_project_is_installed_with_the_constraints_file() -> None:
    runs = " ".join(a for i, a in STEPS if i == "RUN")
    assert re.search(r"pip install --constraint (\S+)", runs)
    copied = [shlex.split(a) for i, a in STEPS if i == "COPY" and not a.startswith("--from")]
    sources = {src for words in copied for src in words[:-1]}
    assert "docker/constraints.txt" in sources and "pyproject.toml" in sources
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.rstrip("*") for p in packages} <= sources, "every package the wheel includes is copied"


def test_command_defaults_to_a_console_script() -> None:
    (cmd,) = [a for i, a in STEPS if i == "CMD"]
    assert not [a for i, a in STEPS if i == "ENTRYPOINT"], "the manifest's command chooses the binary"
    scripts = PYPROJECT["project"]["scripts"]
    assert {"eo-exporter", "eo-scaler", "eo-powercap", "eo-sim"} <= set(scripts)
    assert json.loads(cmd)[0] in scripts  # exec (JSON) form


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize("requirement", PYPROJECT["project"]["dependencies"])
def test_constraints_pin_each_runtime_dependency_within_its_range(requirement: str) -> None:
    req = Requirement(requirement)
    pins = _constraints()
    assert canonicalize_name(req.name) in pins, f"{req.name} is not pinned in docker/constraints.txt"
    assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)


def _copied_sources() -> set[str]:
    copied = [shlex.split(a) for i, a in STEPS if i == "COPY" and not a.startswith("--from")]
    return {src for words in copied for src in words[:-1]}


def test_the_build_context_is_the_packages_and_their_metadata_only() -> None:
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    metadata = {"pyproject.toml", "README.md", "docker/constraints.txt"}  # README: pyproject's `readme`
    assert _copied_sources() == packages | metadata, "rules, dashboards and data ship as package data"


def _dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path decides; ``!`` re-includes."""
    admitted = True
    for raw in patterns:
        exclude = not raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if fnmatch.fnmatchcase(path, pattern):
            admitted = not exclude
    return admitted


def test_the_dockerignore_admits_every_copied_source() -> None:
    text = (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    patterns = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    shut_out = sorted(src for src in _copied_sources() if not _dockerignore_admits(src, patterns))
    assert not shut_out, f"COPY sources the build context leaves out (Dockerfile.dockerignore): {shut_out}"
    assert not _dockerignore_admits("tests", patterns), "the context stays the packages"
    assert not _dockerignore_admits("manifests", patterns)
