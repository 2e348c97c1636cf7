"""``eo-scaler``: run the KEDA external scaler until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from common.logs import configure_logging
from scaler.server import start_scaler
from scaler.settings import parse_settings

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    configure_logging(settings.log_format, settings.log_level)
    try:
        handle = start_scaler(settings)
    except (OSError, RuntimeError) as exc:
        log.error("cannot start eo-scaler: %s", exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: health NOT_SERVING, stopping with %.1fs grace",
            signal.Signals(signum).name,
            settings.grace_s,
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"eo-scaler listening grpc={handle.port} metrics={handle.metrics_port}", flush=True)
    stop.wait()
    handle.stop(settings.grace_s)
    log.info("eo-scaler stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
