"""Keep only the wanted lines of a Prometheus text page as it streams in (pure: bytes in, lines out).

An inference server's /metrics page can be megabytes (per-adapter, per-model series), and the pod
attribution needs a few dozen sample names from it. ``LineFilter`` is fed the decompressed body piece
by piece and keeps the lines whose sample name is wanted, plus the first name that identifies a known
server, so a read holds one piece and the kept lines, never the page or its parse.

Limits (a read that passes one fails, it is not truncated): a wanted line longer than
``MAX_LINE_BYTES``; more than ``MAX_KEPT_LINES`` wanted lines. An unwanted line of any length is
skipped without being held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_LINE_BYTES = 64 * 1024
MAX_KEPT_LINES = 20_000


class TextRejected(ValueError):
    """The page breaks a limit of the filter (a wanted line too long, too many wanted lines)."""


class LineFilter:
    """Feed decompressed pieces with ``feed``; ``finish`` returns the kept lines (bytes, no newline)."""

    def __init__(self, wanted: Iterable[str], signatures: Iterable[tuple[str, str]] = ()) -> None:
        names = sorted({n.encode() for n in wanted}, key=len, reverse=True)
        # A sample line: optional blanks, the name, then labels or blanks before the value.
        alternatives = b"|".join(re.escape(n) for n in names) or b"(?!)"
        self._wanted = re.compile(rb"^[ \t]*(?:" + alternatives + rb")(?=[{ \t])[^\n]*", re.MULTILINE)
        self._signatures = list(signatures)
        prefixes = b"|".join(re.escape(p.encode()) for p, _ in self._signatures) or b"(?!)"
        self._signature = re.compile(rb"^[ \t]*(" + prefixes + rb")", re.MULTILINE)
        self._partial = b""
        self._skipping = False  # inside an unwanted line longer than MAX_LINE_BYTES
        self.kept: list[bytes] = []
        self.detected: str | None = None

    def feed(self, piece: bytes) -> None:
        if self._skipping:
            newline = piece.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            piece = piece[newline + 1 :]
        data = self._partial + piece if self._partial else piece
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return
        self._scan(data, end)
        self._hold(data[end + 1 :])

    def _hold(self, partial: bytes) -> None:
        """Keep the start of an unfinished line, unless it is too long to be one we want."""
        if len(partial) <= MAX_LINE_BYTES:
            self._partial = partial
            return
        if self._wanted.match(partial):
            raise TextRejected(f"a wanted metrics line is longer than {MAX_LINE_BYTES} bytes")
        self._partial, self._skipping = b"", True

    def _scan(self, data: bytes, end: int) -> None:
        if self.detected is None and self._signatures:
            found = self._signature.search(data, 0, end)
            if found is not None:
                prefix = found.group(1).decode()
                self.detected = next(server for p, server in self._signatures if p == prefix)
        for match in self._wanted.finditer(data, 0, end):
            line = match.group(0)
            if len(line) > MAX_LINE_BYTES:
                raise TextRejected(f"a wanted metrics line is longer than {MAX_LINE_BYTES} bytes")
            self.kept.append(line)
            if len(self.kept) > MAX_KEPT_LINES:
                raise TextRejected(f"more than {MAX_KEPT_LINES} lines of the wanted metrics")

    def finish(self) -> list[bytes]:
        """The kept lines, once the whole body was fed (a last line without a newline counts)."""
        if self._partial and not self._skipping:
            tail, self._partial = self._partial + b"\n", b""
            self._scan(tail, len(tail) - 1)
        return self.kept
