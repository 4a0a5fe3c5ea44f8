"""Unit tests of :mod:`ctbmd.io`: label resampling between grids, canonical orientation, labels put back on
the stored grid, label maps read from NIfTI in RAS/LAS, and the header's tube voltage, on small images built
here with known answers (no subprocess, no bundled data).

Geometry follows ITK/DICOM: LPS mm, ``direction`` row-major with column ``c`` the LPS unit vector of index
axis ``c``; arrays are ``(nx, ny, nz)``.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctbmd.errors import InvalidInputError
from ctbmd.io import (array_to_image, grid_of, header_kvp, image_to_array, labels_on_input_grid, read_label_map,
                      resample_labels, to_canonical)
from ctbmd.types import CTVolume, Grid, ScanInfo

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _ids(shape) -> np.ndarray:
    """uint16 array whose every voxel holds its own label (1 + its flat index)."""
    return (np.arange(int(np.prod(shape)), dtype=np.uint16) + 1).reshape(shape)


def _lps(grid: Grid, index) -> np.ndarray:
    """LPS mm of voxel ``index`` (one per row) of ``grid``."""
    d = np.asarray(grid.direction).reshape(3, 3)
    return np.asarray(grid.origin_lps_mm) + (np.atleast_2d(index) * np.asarray(grid.spacing_mm)) @ d.T


def _ct_on(image: sitk.Image) -> CTVolume:
    """A CTVolume read from ``image`` as :func:`ctbmd.io.read_ct` does: canonical array, stored grid kept."""
    canonical = to_canonical(image)
    info = ScanInfo(path="test", format="nifti", input_grid=grid_of(image))
    return CTVolume(hu=image_to_array(canonical).astype(np.float32), grid=grid_of(canonical), info=info)


def test_resample_labels_keeps_values_and_maps_each_voxel_to_its_nearest_source():
    """(0.7, 0.7, 3.0) mm LPS grid onto a 1 mm grid flipped along L and P with another origin: every output
    voxel holds the label of the source voxel nearest its centre, 0 outside, and no value in between."""
    src = Grid((12, 10, 6), (0.7, 0.7, 3.0), (10.0, -5.0, 20.0), IDENTITY)
    labels = _ids(src.size)
    out_grid = Grid((11, 9, 20), (1.0, 1.0, 1.0), (19.3, 2.2, 18.4), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    out = image_to_array(resample_labels(array_to_image(labels, src), out_grid))
    assert out.shape == out_grid.size and out.dtype == np.uint16
    assert set(np.unique(out)) <= set(np.unique(labels)) | {0}  # no interpolated value
    index = np.argwhere(np.ones(out_grid.size, bool))
    continuous = (_lps(out_grid, index) - np.asarray(src.origin_lps_mm)) / np.asarray(src.spacing_mm)
    nearest = np.rint(continuous).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.asarray(src.size)), axis=1)
    clear = np.all(np.abs(np.abs(continuous - np.floor(continuous)) - 0.5) > 1e-3, axis=1)  # no half-way ties
    assert inside.sum() > 100 and (~inside).sum() > 100
    ok = inside & clear
    expected = labels[tuple(nearest[ok].T)]
    assert np.array_equal(out[tuple(index[ok].T)], expected)
    assert not out[tuple(index[~inside & clear].T)].any()
    # the voxel at the source's LPS (13.5, -1.5, 29.0), index (5, 5, 3), lands where that point is on the new grid
    point = _lps(src, [5, 5, 3])[0]
    target = np.rint((np.asarray(out_grid.origin_lps_mm) - point) * [1, 1, -1]).astype(int)
    assert np.allclose(point, [13.5, -1.5, 29.0]) and out[tuple(target)] == labels[5, 5, 3]


def test_resample_labels_takes_a_grid_or_an_image_and_an_output_type():
    src = Grid((4, 4, 4), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)
    image = array_to_image(_ids(src.size), src)
    fine = Grid((8, 8, 8), (1.0, 1.0, 1.0), (-0.4, -0.4, -0.4), IDENTITY)
    from ctbmd.io import grid_reference_image

    by_grid = resample_labels(image, fine, sitk.sitkUInt32)
    by_image = resample_labels(image, grid_reference_image(fine, sitk.sitkFloat32), sitk.sitkUInt32)
    assert by_grid.GetPixelID() == sitk.sitkUInt32 and grid_of(by_grid) == grid_of(by_image) == fine
    assert np.array_equal(image_to_array(by_grid), image_to_array(by_image))
    # fine voxel i at -0.4 + i mm: nearest coarse voxel round((i - 0.4) / 2)
    expected = _ids(src.size)[np.ix_(*[np.rint((np.arange(8) - 0.4) / 2).astype(int)] * 3)]
    assert np.array_equal(image_to_array(by_grid), expected)


def test_to_canonical_points_the_axes_to_l_p_s_and_keeps_every_voxel_in_place():
    """A volume stored with its index axes toward S, R and A (a permutation with two flips) is reoriented
    without interpolation: identity direction, and each voxel keeps its LPS position and value."""
    direction = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # columns: i -> S, j -> R, k -> A
    stored = Grid((5, 6, 7), (3.0, 0.8, 0.9), (4.0, 7.0, -30.0), tuple(direction.ravel()))
    values = _ids(stored.size)
    canonical = to_canonical(array_to_image(values, stored))
    grid = grid_of(canonical)
    assert np.allclose(grid.direction, IDENTITY)
    assert grid.size == (6, 7, 5) and np.allclose(grid.spacing_mm, (0.8, 0.9, 3.0))
    out = image_to_array(canonical)
    for index in ([0, 0, 0], [4, 5, 6], [2, 1, 3]):
        point = _lps(stored, index)[0]
        where = np.rint((point - np.asarray(grid.origin_lps_mm)) / np.asarray(grid.spacing_mm)).astype(int)
        assert out[tuple(where)] == values[tuple(index)]


def test_labels_on_input_grid_restores_a_permuted_flipped_grid_exactly():
    direction = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # i -> R, j -> I, k -> P
    stored = Grid((6, 5, 4), (0.7, 2.5, 1.1), (12.0, -3.0, 40.0), tuple(direction.ravel()))
    values = _ids(stored.size)
    ct = _ct_on(array_to_image(values, stored))
    labels = image_to_array(to_canonical(array_to_image(values, stored)))  # the labels on the canonical grid
    back = labels_on_input_grid(labels, ct)
    assert grid_of(back) == stored  # geometry copied, not recomputed
    assert np.array_equal(image_to_array(back), values) and back.GetPixelID() == sitk.sitkUInt16


def test_labels_on_input_grid_resamples_onto_a_grid_that_is_no_permutation():
    """A canonical grid of 1 mm over a stored grid of 2 mm (same origin): stored voxel (i, j, k) takes the
    canonical label at (2i, 2j, 2k)."""
    stored = Grid((3, 4, 5), (2.0, 2.0, 2.0), (1.0, 2.0, 3.0), IDENTITY)
    canon = Grid((6, 8, 10), (1.0, 1.0, 1.0), (1.0, 2.0, 3.0), IDENTITY)
    ct = CTVolume(hu=np.zeros(canon.size, np.float32), grid=canon,
                  info=ScanInfo(path="test", format="nifti", input_grid=stored))
    labels = _ids(canon.size)
    back = labels_on_input_grid(labels, ct)
    assert grid_of(back) == stored
    assert np.array_equal(image_to_array(back), labels[::2, ::2, ::2])


@pytest.mark.parametrize("orientation", ["RAS", "LAS"])
def test_read_label_map_puts_a_ras_or_las_nifti_on_the_ct_grid(tmp_path, orientation):
    """The CT's labels written as a NIfTI whose first axis points R (RAS) or L (LAS), second A, third S,
    are read back onto the CT's canonical LPS grid voxel for voxel."""
    ct_grid = Grid((7, 6, 5), (0.8, 0.9, 2.0), (-5.0, -6.0, 10.0), IDENTITY)
    ct = CTVolume(hu=np.zeros(ct_grid.size, np.float32), grid=ct_grid,
                  info=ScanInfo(path="ct", format="nifti", input_grid=ct_grid))
    labels = np.zeros(ct_grid.size, np.uint16)
    labels[1:4, 2:5, 1:3] = 20  # L1 in VerSe numbering
    labels[5, 0, 4] = 7
    (sx, sy, sz), (ox, oy, oz), (nx, ny, _) = ct_grid.spacing_mm, ct_grid.origin_lps_mm, ct_grid.size
    # RAS mm = (-L, -P, S); stored index a along R: L = ox + (nx - 1 - a) sx; along L: L = ox + a sx
    if orientation == "RAS":
        stored, affine = labels[::-1, ::-1, :], np.diag([sx, sy, sz, 1.0])
        affine[:3, 3] = (-(ox + (nx - 1) * sx), -(oy + (ny - 1) * sy), oz)
    else:
        stored, affine = labels[:, ::-1, :], np.diag([-sx, sy, sz, 1.0])
        affine[:3, 3] = (-ox, -(oy + (ny - 1) * sy), oz)
    assert "".join(nib.aff2axcodes(affine)) == orientation
    path = tmp_path / f"labels_{orientation}.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), affine), path)
    out = read_label_map(path, ct)
    assert out.shape == ct_grid.size and np.array_equal(out, labels)


def test_read_label_map_that_misses_the_ct_names_the_file(tmp_path):
    ct_grid = Grid((6, 6, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    ct = CTVolume(hu=np.zeros(ct_grid.size, np.float32), grid=ct_grid,
                  info=ScanInfo(path="ct", format="nifti", input_grid=ct_grid))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (0.0, 0.0, 500.0)  # half a metre above the CT
    path = tmp_path / "elsewhere.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), 3, np.uint8), affine), path)
    with pytest.raises(InvalidInputError, match="does not overlap") as err:
        read_label_map(path, ct)
    assert err.value.path == str(path) and str(path) in str(err.value)


@pytest.mark.parametrize(("value", "kvp", "noted"), [("120", 120.0, False), ("1e9", None, True),
                                                     ("", None, False), ("200", None, True)])
def test_header_kvp_uses_only_a_tube_voltage(value, kvp, noted):
    ds = pydicom.Dataset()
    if value:
        ds.add_new(0x00180060, "DS", value)  # KVP
    reading = header_kvp(ds, "slice.dcm")
    assert reading.kvp == kvp and (reading.note is not None) == noted
    assert reading == (kvp, reading.note)  # still unpacks as (kvp, note)
    if noted:
        assert "slice.dcm" in reading.note and "not used" in reading.note
