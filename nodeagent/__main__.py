"""``python -m nodeagent``: the same as ``eo-node-agent``."""

from nodeagent.main import main

raise SystemExit(main())
