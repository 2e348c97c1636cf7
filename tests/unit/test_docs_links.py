"""Every relative link in README.md and the documents under docs/ (and the other Markdown files of the
repository) resolves to a file of the repository, and a ``#fragment`` into a Markdown file to a heading."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# [text](target) and [text](target "title"); images too. Code spans are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCED = re.compile(r"```.*?```", re.DOTALL)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return sorted(REPO / name for name in listed if (REPO / name).is_file())


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in FENCED.sub("", markdown.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchor = github_anchor(match[1])
            n = counts.get(anchor, 0)
            counts[anchor] = n + 1
            found.add(anchor if n == 0 else f"{anchor}-{n}")
    return found


def relative_links(markdown: Path) -> list[str]:
    text = CODE.sub("", markdown.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_scan_finds_the_documents_and_their_links() -> None:
    files = _markdown_files()
    assert REPO / "README.md" in files and REPO / "docs" / "architecture.md" in files
    assert "docs/architecture.md" in relative_links(REPO / "README.md")


@pytest.mark.parametrize("markdown", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(markdown: Path) -> None:
    broken = []
    for target in relative_links(markdown):
        path_part, _, fragment = target.partition("#")
        path = (markdown.parent / path_part).resolve() if path_part else markdown
        if not path.exists() or not path.is_relative_to(REPO):
            broken.append(f"{target} (no such file)")
        elif fragment and path.suffix == ".md" and fragment.lower() not in anchors(path):
            broken.append(f"{target} (no heading #{fragment} in {path.relative_to(REPO)})")
    assert not broken, f"{markdown.relative_to(REPO)}: broken links: {broken}"
