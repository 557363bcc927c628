"""Models: the Lightning task and the multi-target loss."""
