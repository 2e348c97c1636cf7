"""``eo-exporter`` / ``python -m exporter``: parse settings, start the server, stop on SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from common.logs import configure_logging
from exporter.pods.settings import PodAttributionError
from exporter.server import start_exporter
from exporter.settings import SettingsError, parse_settings

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as err:
        print(f"eo-exporter: error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        handle = start_exporter(settings)
    except PodAttributionError as err:
        print(f"eo-exporter: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        log.error("cannot serve on %s:%d: %s", settings.listen_address, settings.port, err)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
