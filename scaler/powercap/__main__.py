"""``python -m scaler.powercap``: the same as ``eo-powercap``."""

from scaler.powercap.main import main

raise SystemExit(main())
