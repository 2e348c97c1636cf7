"""Pieces every Energy Orchestrator service shares: bounded HTTP reads and the one Prometheus client."""
