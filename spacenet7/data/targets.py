"""Footprint / boundary / contact targets from instance rasters (the SN7 winners' recipe)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CHANNELS = ("footprint", "boundary", "contact")
# The 7-band chip (chip layout=chips): written by ``chip``, read by ``data.dataset``.
CHIP_BANDS = ("red", "green", "blue", *CHANNELS, "ignore")
CHIP_RGB = slice(0, 3)
CHIP_TARGETS = slice(3, 3 + len(CHANNELS))
CHIP_IGNORE = CHIP_BANDS.index("ignore")
_BIG = np.iinfo(np.int32).max


def make_targets(instances: np.ndarray, boundary_width: int = 1, contact_width: int = 1) -> np.ndarray:
    """Three binary channels from an instance raster (0 = background, k = building k).

    - footprint: any building;
    - boundary: building pixels within ``boundary_width`` of a pixel of another label;
    - contact: pixels within ``contact_width`` of two or more different buildings (the seams
      between touching buildings that the watershed must cut).

    Returns:
        (3, H, W) uint8 array of 0/1.
    """
    inst = instances.astype(np.int32, copy=False)
    fp = inst > 0
    size_b = 2 * boundary_width + 1
    boundary = fp & ((ndimage.grey_dilation(inst, size_b) != inst) | (ndimage.grey_erosion(inst, size_b) != inst))
    size_c = 2 * contact_width + 1
    hi = ndimage.grey_dilation(inst, size_c)
    lo = ndimage.grey_erosion(np.where(fp, inst, _BIG), size_c)
    contact = (hi > 0) & (lo < _BIG) & (hi != lo)
    return np.stack([fp, boundary, contact]).astype(np.uint8)
