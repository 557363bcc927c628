"""SpaceNet 7 data access: layout scanning, labels, rasterization, splits, torch datasets."""
