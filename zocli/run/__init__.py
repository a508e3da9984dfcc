"""Layer 3, a run: its directory, checkpoints and metrics, the session it trains in, the class-incremental
training and evaluation loops, the precision gate and the trackers it reports to."""
