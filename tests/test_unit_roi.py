"""Unit tests of stage 2 (:mod:`ctbmd.roi`): vertebral body, trabecular ROI and the level's QC flags.

Small synthetic volumes built here, with answers known from the documented method: the body is
the opening of the vertebra by a 6 mm ball; the ROI keeps the voxels at least 4 mm (by the Euclidean
distance between voxel centres, in mm) from the body's outside, and ``4 + (t - 1) / 2`` mm along z
for a slice thickness ``t``; hyperdense voxels (``median + max(150 HU, 4 robust SD)``) are dropped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctbmd.masks import distance_mm
from ctbmd.roi import (CORTEX_EROSION_MM, LevelROI, LevelROIs, TrabecularROI, measure_level, measure_levels,
                       trabecular_roi, vertebral_body)
from ctbmd.types import VERSE_LABELS, CTVolume, Grid, ScanInfo, SpineSegmentation

SPACING = (0.7, 0.7, 3.0)
#: the box body of :func:`_spine`, in voxels of SPACING: x 10:50 (28 mm), y 5:48 (30.1 mm), 10 slices (30 mm)
BODY_X, BODY_Y, BODY_NZ = slice(10, 50), slice(5, 48), 10
SLICE_STEP = 13  # a body every 13 slices: 10 of bone, 3 of disc (9 mm)


def _dropped(margin_mm: float, spacing_mm: float) -> int:
    """Voxels lost at each face of a box: those whose centre lies nearer than ``margin_mm`` to the
    first outside voxel's centre, ``(i + 1) * spacing < margin``."""
    return math.ceil(margin_mm / spacing_mm) - 1


def _extent(mask: np.ndarray) -> list[tuple[int, int]]:
    """Index range (first, last) of the True voxels along each axis."""
    return [(int(i.min()), int(i.max())) for i in np.nonzero(mask)]


def _spine(levels=("L2", "L1", "T12"), z0: int = 4, nz: int = 44, body_hu: float = 150.0, noise_hu: float = 10.0,
           seed: int = 0, thickness_mm: float | None = 3.0) -> tuple[CTVolume, SpineSegmentation]:
    """Box vertebrae stacked along S (caudal first) at SPACING, each a body, two pedicles, a lamina and a
    spinous process around a 7 mm canal; soft tissue of -100 HU around; Gaussian noise of ``noise_hu``."""
    shape = (60, 80, nz)
    rng = np.random.default_rng(seed)
    hu = -100.0 + rng.normal(0.0, noise_hu, shape)
    labels = np.zeros(shape, np.uint8)
    z = z0
    for level in levels:
        value = VERSE_LABELS[level]
        labels[BODY_X, BODY_Y, z:z + BODY_NZ] = value
        arch = slice(z + 3, z + 7)
        labels[10:17, 48:58, arch] = labels[43:50, 48:58, arch] = value  # pedicles, 4.9 mm wide
        labels[10:50, 58:62, arch] = value  # lamina
        labels[27:33, 62:75, arch] = value  # spinous process
        body = (BODY_X, BODY_Y, slice(z, z + BODY_NZ))
        hu[body] = body_hu + rng.normal(0.0, noise_hu, hu[body].shape)
        z += SLICE_STEP
    grid = Grid(size=shape, spacing_mm=SPACING, origin_lps_mm=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    ct = CTVolume(hu=hu.astype(np.float32), grid=grid,
                  info=ScanInfo(path="synthetic", format="nifti", input_grid=grid, slice_thickness_mm=thickness_mm))
    return ct, SpineSegmentation(labels=labels, body=None, levels=tuple(levels), backend="labels")


def _box_body(shape=(40, 43, 10), pad: int = 2) -> np.ndarray:
    return np.pad(np.ones(shape, bool), pad)


def test_vertebral_body_keeps_the_box_and_drops_the_processes():
    ct, seg = _spine(levels=("L1",))
    vertebra = seg.labels == VERSE_LABELS["L1"]
    body = vertebral_body(vertebra, SPACING)
    assert not (body & ~vertebra).any()  # an opening never adds
    # the box's faces stay where they were (40 x 43 voxels, 10 slices: 28 x 30.1 x 30 mm) ...
    assert _extent(body[:, :48]) == [(10, 49), (5, 47), (4, 13)]
    assert body[30, 5:48, 8].all() and body[10:50, 25, 8].all() and body[30, 25, 4:14].all()
    # ... its 12 edges are rounded by the 6 mm ball: the corner voxel goes
    assert not body[10, 5, 4]
    # the pedicles (4.9 mm), lamina (2.8 mm) and spinous process (4.2 mm) are thinner than 12 mm: gone,
    # all but the fillet the opening leaves where a pedicle meets the body (within 2 voxels of it)
    assert not body[:, 50:].any()


def test_vertebral_body_of_a_mask_thinner_than_the_ball_is_empty():
    thin = np.zeros((30, 30, 10), bool)
    thin[5:25, 5:25, 4:6] = True  # 2 slices of 3 mm: no voxel centre is 6 mm from the outside
    body = vertebral_body(thin, SPACING)
    assert body.shape == thin.shape and not body.any()
    thin[5:25, 5:25, 4:7] = True  # 3 slices: the middle one is 6 mm (two slices) from the outside, and stays
    assert _extent(vertebral_body(thin, SPACING)) == [(5, 24), (5, 24), (4, 6)]


@pytest.mark.parametrize(("spacing", "thickness_mm"), [((0.7, 0.7, 3.0), None), ((0.7, 0.7, 3.0), 7.0),
                                                       ((1.0, 1.0, 3.0), 1.0), ((1.0, 1.0, 1.5), 5.0)])
def test_trabecular_roi_of_a_box_is_the_box_inset_by_margins_in_mm(spacing, thickness_mm):
    body = _box_body()
    roi = trabecular_roi(body, np.full(body.shape, 150.0), spacing, thickness_mm)
    assert isinstance(roi, TrabecularROI) and roi.excluded_fraction == 0.0
    t = thickness_mm or spacing[2]
    z_margin = max(CORTEX_EROSION_MM, CORTEX_EROSION_MM + (t - 1.0) / 2.0)  # 4 mm, or 4 + (t - 1) / 2 along z
    drop = [_dropped(CORTEX_EROSION_MM, spacing[0]), _dropped(CORTEX_EROSION_MM, spacing[1]),
            _dropped(z_margin, spacing[2])]
    # the box: x 2..41, y 2..44, z 2..11 (pad 2)
    expected = [(2 + d, last - d) for d, last in zip(drop, (41, 44, 11))]
    assert _extent(roi.mask) == expected
    assert roi.mask.sum() == np.prod([hi - lo + 1 for lo, hi in expected])  # a box: every voxel inside kept


def test_trabecular_roi_margin_is_millimetres_not_voxels():
    # the same 28 x 30 x 30 mm body at 0.7 and at 1.4 mm pixels: the 4 mm margin is 5 and 2 voxels
    fine = trabecular_roi(_box_body((40, 43, 10)), np.zeros((44, 47, 14)), (0.7, 0.7, 3.0)).mask
    coarse = trabecular_roi(_box_body((20, 22, 10)), np.zeros((24, 26, 14)), (1.4, 1.4, 3.0)).mask
    assert _extent(fine)[0] == (2 + 5, 41 - 5) and _extent(coarse)[0] == (2 + 2, 21 - 2)
    # ROI widths 30 x 0.7 = 21.0 mm and 16 x 1.4 = 22.4 mm: both the 28 mm body less about 2 x 3.5 mm
    assert (_extent(fine)[0][1] - _extent(fine)[0][0] + 1) * 0.7 == pytest.approx(21.0)
    assert (_extent(coarse)[0][1] - _extent(coarse)[0][0] + 1) * 1.4 == pytest.approx(22.4)


def test_hyperdense_focus_is_dropped_and_its_share_of_the_deep_core_reported():
    body = _box_body()
    rng = np.random.default_rng(1)
    hu = 150.0 + rng.normal(0.0, 10.0, body.shape)
    hu[18:26, 18:26, 5:9] = 1200.0  # a bone island, 5.6 x 5.6 x 12 mm, in the middle
    roi = trabecular_roi(body, hu, SPACING, 3.0)
    focus = np.zeros(body.shape, bool)
    focus[18:26, 18:26, 5:9] = True
    assert not (roi.mask & focus).any()
    assert (roi.mask | focus).sum() == 30 * 33 * 8  # nothing else dropped (noise of 10 HU is far below +150 HU)
    # the deep core is >= 8 mm inside: (i + 1) x 0.7 >= 8 drops 11 voxels in-plane, (k + 1) x 3 >= 8 two slices
    deep = np.zeros(body.shape, bool)
    deep[2 + 11:41 - 11 + 1, 2 + 11:44 - 11 + 1, 2 + 2:11 - 2 + 1] = True
    assert roi.excluded_fraction == pytest.approx((focus & deep).sum() / deep.sum())
    assert roi.excluded_fraction > 0.10  # the hyperdense_focus flag's threshold


def test_trabecular_roi_of_a_body_too_thin_to_erode_is_empty():
    body = _box_body((40, 43, 2))  # 6 mm high: no voxel is 4 mm from both endplates
    roi = trabecular_roi(body, np.zeros(body.shape), SPACING)
    assert not roi.mask.any() and roi.excluded_fraction == 0.0


def test_measure_level_of_a_box_reads_its_hu_and_volume():
    ct, seg = _spine()
    one = measure_level(ct, seg, "L1")
    assert isinstance(one, LevelROI)
    m = one.measurement
    assert m.level == "L1" and m.flags == () and m.genant_grade == 0
    assert one.roi.shape == ct.hu[one.crop].shape and m.roi_voxels == int(one.roi.sum())
    # the crop is the label's box plus 2 voxels; L1's body is slices 17..26
    assert one.crop[2] == slice(17 - 2, 27 + 2)
    assert m.roi_volume_mm3 == pytest.approx(m.roi_voxels * 0.7 * 0.7 * 3.0, abs=0.05)
    # the ROI lies in the body, 4 mm in: x 15..44 and one slice off each endplate (18..25)
    x, _, z = _extent(one.roi)
    assert (x[0] + one.crop[0].start, x[1] + one.crop[0].start) == (15, 44)
    assert (z[0] + one.crop[2].start, z[1] + one.crop[2].start) == (18, 25)
    # 150 HU with noise SD 10 over ~7700 voxels: the mean within 4 standard errors, the SD within 5%
    values = ct.hu[one.crop][one.roi]
    assert m.hu_mean == pytest.approx(float(values.mean())) and m.hu_median == pytest.approx(float(np.median(values)))
    assert m.hu_mean == pytest.approx(150.0, abs=4 * 10.0 / math.sqrt(m.roi_voxels))
    assert m.hu_median == pytest.approx(150.0, abs=5 * 10.0 / math.sqrt(m.roi_voxels))
    assert m.hu_sd == pytest.approx(10.0, rel=0.05)
    assert m.heights_mm == {"anterior": 30.0, "middle": 30.0, "posterior": 30.0}


def test_a_vertebra_cut_by_the_scan_edge_is_partial_and_not_graded():
    ct, seg = _spine(z0=0)  # L2 starts on the first slice
    levels = {m.level: m for m in measure_levels(ct, seg).levels}
    assert levels["L2"].flags == ("partial",) and levels["L2"].genant_grade is None
    assert levels["L1"].flags == () and levels["L1"].genant_grade == 0


def test_metal_and_hyperdense_focus_flags():
    ct, seg = _spine()
    hu = ct.hu.copy()
    z = 4 + SLICE_STEP  # L1's lowest slice
    hu[30, 60, z + 4] = hu[31, 60, z + 4] = hu[32, 60, z + 4] = 3000.0  # three voxels of a screw, in the lamina
    hu[25:35, 20:32, z + 3:z + 7] = 1000.0  # sclerosis in the middle of the body
    ct = CTVolume(hu=hu, grid=ct.grid, info=ct.info)
    m = measure_level(ct, seg, "L1").measurement
    assert m.flags == ("metal", "hyperdense_focus")
    assert m.hu_median == pytest.approx(150.0, abs=1.0)  # the focus is left out of the ROI
    # two voxels above 2500 HU are noise, not metal
    hu[32, 60, z + 4] = 150.0
    assert "metal" not in measure_level(CTVolume(hu=hu, grid=ct.grid, info=ct.info), seg, "L1").measurement.flags


def _one_box(ct: CTVolume, box: tuple[slice, slice, slice]) -> SpineSegmentation:
    labels = np.zeros(ct.hu.shape, np.uint8)
    labels[box] = VERSE_LABELS["L1"]
    return SpineSegmentation(labels=labels, body=None, levels=("L1",), backend="labels")


def test_a_small_body_is_flagged_too_small():
    ct, _ = _spine(levels=("L1",))
    # 14 x 14 x 9 mm: a ROI of a few voxels, under 2 cm^3; its HU are still reported
    m = measure_level(ct, _one_box(ct, (slice(20, 40), slice(20, 40), slice(10, 13))), "L1").measurement
    assert m.flags == ("too_small",) and 0 < m.roi_volume_mm3 < 2000.0 and m.hu_median is not None
    # 14 x 14 x 6 mm: nothing survives the opening, no ROI, no HU
    m = measure_level(ct, _one_box(ct, (slice(20, 40), slice(20, 40), slice(10, 12))), "L1").measurement
    assert m.flags == ("too_small",) and m.roi_voxels == 0 and m.roi_volume_mm3 == 0.0
    assert (m.hu_median, m.hu_mean, m.hu_sd) == (None, None, None)


def test_measure_level_of_a_missing_level_raises():
    ct, seg = _spine(levels=("L1",))
    with pytest.raises(ValueError, match="L3"):
        measure_level(ct, seg, "L3")


def test_measure_levels_map_holds_every_roi_with_its_verse_label():
    ct, seg = _spine()
    rois = measure_levels(ct, seg)
    assert isinstance(rois, LevelROIs)
    assert [m.level for m in rois.levels] == ["L2", "L1", "T12"]
    assert rois.roi_labels.shape == ct.hu.shape and rois.roi_labels.dtype == np.uint8
    for m in rois.levels:
        assert int((rois.roi_labels == VERSE_LABELS[m.level]).sum()) == m.roi_voxels
    assert set(np.unique(seg.labels[rois.roi_labels > 0])) == {VERSE_LABELS[lv] for lv in ("L2", "L1", "T12")}


def test_distance_mm_respects_anisotropic_spacing():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    d = distance_mm(mask, (0.5, 1.0, 2.0))
    # the centre voxel (4, 4, 4) is 4 voxels from the outside along each axis: 2, 4 and 8 mm; the nearest is 2 mm
    assert d[4, 4, 4] == pytest.approx(2.0) and d[0, 4, 4] == 0.0
    assert d[4, 1, 4] == pytest.approx(1.0)  # next to the outside along y: 1 voxel of 1 mm
