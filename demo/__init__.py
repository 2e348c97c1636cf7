"""`make demo`: the whole loop on simulated GPUs with a real Prometheus."""
