"""Metrics: SCOT (SpaceNet Change and Object Tracking) and building F1."""
