"""What the two GPU-writing daemons (``eo-powercap``, ``eo-node-agent``) share as processes.

- ``Cli``: the command line derived from a settings class, a bad value turned into the binary's own
  "refusing to start" exception, and ``main``'s exit statuses (2 when it refuses to start);
- ``stop_on_signals``: SIGTERM and SIGINT set the stop event;
- ``GuardedLoops``: a loop thread that steps every interval and a watchdog thread that enforces
  staleness every min(interval, ``WATCHDOG_MAX_PERIOD_S``), each restoring every GPU when a step raises;
  ``shut_down`` restores first and returns within ``SHUTDOWN_BUDGET_S`` whatever the threads are doing;
- ``write_lock_or_not``: the write lock a restore takes, given up after ``WRITE_LOCK_WAIT_S`` so that a
  GPU write that never returns cannot hold a restore back;
- ``serve_or_refuse``: ``/metrics`` and ``/healthz``, or the daemon closed and its start refused.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Generic

from prometheus_client import CollectorRegistry

from common.metrics_server import MetricsServerHandle, registry_renderer, serve_metrics
from common.settings import S, SettingsError, build_parser, load

SHUTDOWN_BUDGET_S = 5.0
"""A daemon's stop (SIGTERM) restores and returns within this, whatever its loop is doing."""
WRITE_LOCK_WAIT_S = 1.0
"""How long a restore waits for a GPU write in progress before restoring without it."""
WATCHDOG_MAX_PERIOD_S = 1.0
"""The staleness watchdog checks every min(interval, this): a restore comes at most that late."""
_JOIN_S = 0.5
FLAGS_EPILOG = "Every flag --some-flag is also the variable EO_SOME_FLAG; a flag wins over its variable."


@dataclass(frozen=True)
class Cli(Generic[S]):
    """A daemon's command line: the flags come from ``settings``; ``refused`` is the binary's own
    exception for a start it refuses (its message is printed, the exit status is 2)."""

    prog: str
    settings: type[S]
    description: str
    refused: type[Exception]
    epilog: str = FLAGS_EPILOG

    def parser(self) -> argparse.ArgumentParser:
        """``--help`` lists every flag with its variable and default."""
        return build_parser(self.settings, self.prog, self.description, self.epilog)

    def load(self, argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> S:
        """Settings from ``argv`` over ``environ`` (default: the process's) over the defaults; a bad value
        raises ``refused`` naming the flag and its variable."""
        try:
            return load(
                self.settings,
                argv,
                prog=self.prog,
                description=self.description,
                epilog=self.epilog,
                environ=environ,
            )
        except SettingsError as exc:
            raise self.refused(str(exc)) from None

    def main(self, run: Callable[[], int]) -> int:
        """``run``'s exit status, or 2 with one line on stderr when the start is refused."""
        try:
            return run()
        except (self.refused, OSError) as exc:
            # OSError: a state or lock directory not writable, and the like: a message, not a stack trace.
            print(f"{self.prog}: refusing to start: {exc}", file=sys.stderr)
            return 2


def stop_on_signals(stop: threading.Event | None, logger: logging.Logger) -> threading.Event:
    """``stop`` (a new event when None), set by SIGTERM and SIGINT. Handlers can be installed from the
    main thread only; a daemon run from another thread (a test) is stopped through the event."""
    event = stop or threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: restoring the GPUs and stopping", signal.Signals(signum).name)
        event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    return event


@contextlib.contextmanager
def write_lock_or_not(lock: threading.Lock, logger: logging.Logger) -> Iterator[None]:
    """Hold ``lock`` if it comes within ``WRITE_LOCK_WAIT_S``, else go on without it (logged): a GPU
    write stuck in the driver must not keep a GPU capped."""
    acquired = lock.acquire(timeout=WRITE_LOCK_WAIT_S)
    if not acquired:
        logger.error(
            "a GPU write did not finish within %gs; restoring without waiting for it", WRITE_LOCK_WAIT_S
        )
    try:
        yield
    finally:
        if acquired:
            lock.release()


def serve_or_refuse(
    registry: CollectorRegistry,
    health: Callable[[], tuple[bool, str]],
    *,
    address: str,
    port: int,
    name: str,
    close: Callable[[], object],
    refused: type[Exception],
) -> MetricsServerHandle:
    """``/metrics`` and ``/healthz`` on ``address:port``; when the port cannot be had, ``close`` (restores
    what the daemon touched) and ``refused`` naming the address."""
    try:
        return serve_metrics(registry_renderer(registry), health, address=address, port=port, name=name)
    except OSError as exc:
        close()
        raise refused(f"cannot listen on {address}:{port}: {exc}") from exc


class GuardedLoops:
    """A daemon's loop and staleness watchdog threads (``<name>-loop``, ``<name>-watchdog``)."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self._log = logger
        self._stop = threading.Event()
        self.threads: tuple[threading.Thread, ...] = ()

    def start(
        self,
        *,
        step: Callable[[], object],
        step_name: str,
        enforce_staleness: Callable[[], object],
        interval_s: float,
        restore: Callable[[], object],
    ) -> None:
        """``step`` every ``interval_s``; ``enforce_staleness`` every min(interval, 1 s)."""

        def guarded(action: Callable[[], object], what: str) -> None:
            try:
                action()
            except Exception:
                # A bug must not leave a GPU capped: restore everything, keep serving, try again.
                self._log.exception("%s failed; restoring every GPU", what)
                restore()

        def loop() -> None:
            while not self._stop.is_set():
                guarded(step, step_name)
                self._stop.wait(interval_s)

        def watchdog() -> None:
            period = min(interval_s, WATCHDOG_MAX_PERIOD_S)
            while not self._stop.wait(period):
                guarded(enforce_staleness, "staleness check")

        self.threads = (
            threading.Thread(target=loop, name=f"{self.name}-loop", daemon=True),
            threading.Thread(target=watchdog, name=f"{self.name}-watchdog", daemon=True),
        )
        for thread in self.threads:
            thread.start()

    def shut_down(self, close: Callable[[], bool], *then: Callable[[], object]) -> bool:
        """Stop for good, once: ``close`` (it restores every GPU and says whether all are restored) does
        not wait for a step; the threads get a short wait each (daemons: one stuck in a read writes
        nothing more and ends with the process); then each of ``then``. Returns ``close``'s answer
        (True on a second call), within ``SHUTDOWN_BUDGET_S``."""
        if self._stop.is_set():
            return True
        end = time.monotonic() + SHUTDOWN_BUDGET_S
        self._stop.set()
        ok = close()
        for thread in self.threads:
            thread.join(max(0.0, min(_JOIN_S, end - time.monotonic())))
            if thread.is_alive():
                self._log.warning("%s still busy (a read); it writes nothing more", thread.name)
        for action in then:
            action()
        return ok
