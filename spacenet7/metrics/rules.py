"""The SpaceNet 7 scoring rules' constants, in one place: ``evaluate``'s defaults
(:class:`spacenet7.config.EvaluateConfig`) and the metric functions' defaults read them."""

IOU_THRESHOLD = 0.25
"""A truth and a proposal polygon match when their IoU is above this."""

BETA = 2.0
"""SCOT = (1 + b^2) c t / (b^2 c + t): the weight ``b`` of the change term ``c`` over the tracking term ``t``."""

MIN_TRUTH_AREA = 4.0
"""Ground-truth polygons smaller than this (px^2, source pixels) are not scored."""
