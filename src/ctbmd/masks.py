"""Small mask helpers shared by the stages."""

from __future__ import annotations

import cc3d
import edt
import numpy as np
from scipy import ndimage as ndi


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


def cross_opening(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary opening by the 6-connected cross, repeated: ``scipy.ndimage.binary_opening(mask, iterations=n)``.

    The same result as that call with its default structure (outside the array
    counted as background, so the outermost voxels are eroded away; tested
    against it), made of whole-array slice operations (:func:`_step`). About
    seven times faster on the working grid, where scipy's generic
    neighbourhood loop was a tenth of a 3 mm run (issue 13).

    Parameters
    ----------
    mask : numpy.ndarray
        bool, 3-D, any axis order.
    iterations : int
        Erosions, then as many dilations (>= 1).

    Returns
    -------
    numpy.ndarray
        bool, same shape; a new array.
    """
    out = np.asarray(mask, bool)
    for erode in [True] * iterations + [False] * iterations:
        out = _step(out, (0, 1, 2), erode)
    return out


def box_closing(mask: np.ndarray) -> np.ndarray:
    """Binary closing by a 3 x 3 x 3 box: ``scipy.ndimage.binary_closing(mask, structure=np.ones((3, 3, 3)))``.

    The same result as that call (outside the array counted as background, so
    the outermost voxels are eroded away; tested against it). A box is three
    segments in a row, so the dilation and the erosion are each done one axis
    at a time (:func:`_step`).

    Parameters
    ----------
    mask : numpy.ndarray
        bool, 3-D, any axis order.

    Returns
    -------
    numpy.ndarray
        bool, same shape; a new array.
    """
    out = np.asarray(mask, bool)
    for erode in (False, True):
        for axis in range(3):
            out = _step(out, (axis,), erode)
    return out


def _step(mask: np.ndarray, axes: tuple[int, ...], erode: bool) -> np.ndarray:
    """One erosion (``erode``) or dilation of a bool 3-D mask by a voxel and its neighbours along ``axes``.

    ``axes = (0, 1, 2)`` is the 6-connected cross; one axis is a 3-voxel segment.
    In an erosion the neighbour beyond the array's edge counts as background.
    """
    out = mask.copy()
    combine = np.logical_and if erode else np.logical_or
    for axis in axes:
        n = mask.shape[axis]
        at = lambda index: (slice(None),) * axis + (index,)  # noqa: E731
        combine(out[at(slice(0, n - 1))], mask[at(slice(1, n))], out=out[at(slice(0, n - 1))])
        combine(out[at(slice(1, n))], mask[at(slice(0, n - 1))], out=out[at(slice(1, n))])
        if erode:
            out[at(0)] = False
            out[at(n - 1)] = False
    return out


def plane_holes(mask: np.ndarray) -> np.ndarray:
    """The holes of each plane ``mask[:, :, k]``, as :func:`scipy.ndimage.binary_fill_holes` finds them per plane.

    A hole is a 4-connected run of background that does not reach the plane's edge.
    All planes are labelled in one :func:`scipy.ndimage.label` call whose structure
    connects voxels within a plane only.

    Parameters
    ----------
    mask : numpy.ndarray
        bool, shape ``(nx, ny, nz)``.

    Returns
    -------
    numpy.ndarray
        bool, same shape: True in the holes (background voxels only).
    """
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(~mask, structure=in_plane)
    hole = np.ones(n + 1, bool)
    hole[0] = False  # the mask itself
    hole[np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()])] = False
    return hole[lab]


def label_values(labels: np.ndarray) -> set[int]:
    """The non-zero values present in a non-negative integer label map (any shape).

    From the bounding boxes (:func:`label_boxes`): one pass, about twice as fast
    as ``numpy.unique`` on a full-resolution volume.
    """
    return set(label_boxes(labels))


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every label value present, in one pass over the volume.

    Parameters
    ----------
    labels : numpy.ndarray
        Non-negative integer label map (values below 2**31), any shape (here ``(nx, ny, nz)``).

    Returns
    -------
    dict
        Label value (> 0) -> tuple of slices, one per axis
        (:func:`scipy.ndimage.find_objects`).
    """
    if labels.dtype not in (np.uint8, np.uint16, np.int8, np.int16, np.int32):
        labels = labels.astype(np.int32)  # find_objects takes no bool, float or 64-bit map
    return {i + 1: box for i, box in enumerate(ndi.find_objects(labels)) if box is not None}


def distance_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance (mm) from each voxel of ``mask`` to the nearest voxel outside it.

    The exact anisotropic distance transform of the ``edt`` library (seung-lab,
    the maker of connected-components-3d), single-threaded (its threads cost more
    than they save at these sizes), two to three times faster than
    :func:`scipy.ndimage.distance_transform_edt`. It computes in float32, so a voxel
    lying exactly at a threshold distance (e.g. 10 x 0.6 mm = 6 mm) may fall on the
    other side of ``>=`` than scipy's float64 puts it; elsewhere the values agree to
    float32 precision. As there, the array's edge is not a boundary; a mask with no
    voxel outside it gives ``inf`` everywhere.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean, shape ``(nx, ny, nz)``.
    spacing_mm : tuple of float
        Voxel size along the three axes (mm).

    Returns
    -------
    numpy.ndarray
        float32, same shape; 0 outside the mask.
    """
    # passed as 0/1 uint8 (one label): the same distances, up to twice as fast as a bool array in edt 3.x
    labels = np.asarray(mask, bool).view(np.uint8)
    return edt.edt(labels, anisotropy=tuple(float(s) for s in spacing_mm), black_border=False, parallel=1)
