"""Layer 2, the method: the frozen CLIP backbone, its adapters, which units are ZO, the loss, the ZO
estimators and the hybrid step. Tensors in, tensors out: no run directory, no files but the weights."""
