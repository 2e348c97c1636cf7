"""``python -m exporter`` runs eo-exporter."""

import sys

from exporter.main import main

sys.exit(main())
