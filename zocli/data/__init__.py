"""Layer 1, the data: the benchmark catalogue, the offline test-bed, preparing and loading on-disk copies
(shipped benchmarks and the user's `folder:`/`hf:` ones), and the image loaders. No model code."""
