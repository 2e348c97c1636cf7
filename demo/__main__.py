"""``make demo`` / ``python -m demo``: for now, the exporter on simulated GPUs scraped by Prometheus."""

from demo.exporter_only import main

main()
