"""GPU devices behind one small interface: NVML for real GPUs, a simulated one for everything else."""
