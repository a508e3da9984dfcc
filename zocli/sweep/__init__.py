"""Layer 5, many runs: a sweep's grid and directory, and launching its runs locally or on SLURM."""
