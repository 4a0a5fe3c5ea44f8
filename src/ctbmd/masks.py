"""Small mask helpers shared by the stages."""

from __future__ import annotations

import cc3d
import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component of a boolean 3-D mask (any axis order).

    Returns the mask unchanged when it is empty; otherwise a boolean array of the
    same shape holding only the largest component (connected-components-3d).
    """
    labels = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=6)
    if labels.max() == 0:
        return mask
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == np.argmax(counts)
