"""eo-exporter: GPU, CPU and node power and energy, attributed to pods and workloads."""
