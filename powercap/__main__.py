"""``python -m powercap``: the same as ``eo-powercap``."""

from powercap.main import main

raise SystemExit(main())
