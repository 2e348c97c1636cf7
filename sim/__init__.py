"""eo-sim: replay a request trace through the real policies against the calibrated GPU model."""
