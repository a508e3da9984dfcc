"""Layer 4, the study's measurements: gradient variance, peak memory, comparisons and statistics over
runs, the published figures and the plots."""
