"""The power-cap sidecar (``eo-powercap``): trades an inference pod's latency slack for GPU energy.

``controller`` is the pure control law; ``sidecar`` runs it against GPUs; ``main`` is the CLI.
"""
