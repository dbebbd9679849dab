"""Finding what a backdoor left: pair scoring and UBT's discovery, detectors, the suspicious set, DECREE,
the segmentation-oracle finder, token attribution."""
