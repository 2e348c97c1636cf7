"""A GPU inference-server model calibrated from published H100 serving measurements.

Pure code (no I/O): the simulated GPU device, the power-cap tests and the simulator all share it, so
what the demo shows and what the simulator predicts come from one set of documented parameters.
"""

from gpumodel.model import (
    H100_LLAMA_8B,
    H100X4_LLAMA_70B,
    PROFILES,
    OperatingPoint,
    ServerProfile,
    operating_point,
)

__all__ = [
    "H100X4_LLAMA_70B",
    "H100_LLAMA_8B",
    "PROFILES",
    "OperatingPoint",
    "ServerProfile",
    "operating_point",
]
