"""Face data: image loading, sources, splits, mask painting, crops and the input pipeline."""
