"""Repository tools: generators and checks run from the repository root (``python -m tools.<name>``)."""
