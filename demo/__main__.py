"""``make demo`` / ``python -m demo``: the whole loop, live (see ``demo.cli`` and ``demo.loop``)."""

import sys

from demo.cli import main

sys.exit(main())
