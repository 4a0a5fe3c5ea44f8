"""Unit tests of the body heights and Genant's grade (:mod:`ctbmd.heights`) on small drawn spines.

Known answers: a box body of 30 mm is 30 mm high at its anterior wall, middle and posterior wall
(ratios 1, grade 0); a wedge that loses ``f`` of its anterior height against a normal posterior
height and normal neighbours has Genant grade 1 for 20% <= f < 25%, 2 for 25-40%, 3 from 40%
(Genant et al., J Bone Miner Res 1993;8:1137); a body short by the same fraction at every height
between two normal neighbours is a crush; a vertebra cut by the scan's edge is not graded.
"""

from __future__ import annotations

import numpy as np
import pytest

import ctbmd.heights as heights
from ctbmd.heights import (BodyHeights, GenantGrade, body_heights, genant_grade, grade_level, level_heights,
                           sagittal_profile)
from ctbmd.heights import grade as grade_module
from ctbmd.heights import levels as levels_module
from ctbmd.heights import profile as profile_module
from ctbmd.roi import measure_levels
from ctbmd.types import VERSE_LABELS, CTVolume, Grid, ScanInfo, SpineSegmentation

SPACING = (0.7, 0.7, 1.0)
DEPTH_MM = 30.0  # the body's antero-posterior depth, from y = 3 mm


def _spine(bodies, spacing=SPACING, gap_mm: float = 8.0, margin_mm: float = 6.0):
    """Vertebrae stacked along S, caudal first: ``bodies`` is ``(level, anterior_mm, posterior_mm)``, the
    body's top falling linearly from the posterior to the anterior height; behind it a 12 mm canal,
    pedicles outside the mid-sagittal slab, a lamina and a spinous process. Label map backend."""
    total = sum(max(a, p) for _, a, p in bodies) + gap_mm * (len(bodies) - 1) + 2 * margin_mm
    shape = (int(42 / spacing[0]), int(60 / spacing[1]), int(np.ceil(total / spacing[2])))
    x, y, z = ((np.arange(n) + 0.5) * s for n, s in zip(shape, spacing))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    labels = np.zeros(shape, np.uint8)
    z0 = margin_mm
    for level, anterior, posterior in bodies:
        top = z0 + anterior + (posterior - anterior) * np.clip((Y - 3.0) / DEPTH_MM, 0.0, 1.0)
        body = (np.abs(X - 21.0) <= 14.0) & (Y >= 3.0) & (Y <= 3.0 + DEPTH_MM) & (Z >= z0) & (Z <= top)
        arch_z = np.abs(Z - (z0 + min(anterior, posterior) / 2.0)) <= 4.0
        pedicles = (np.abs(X - 21.0) >= 7.0) & (np.abs(X - 21.0) <= 12.0) & (Y > 33.0) & (Y <= 45.0) & arch_z
        lamina = (np.abs(X - 21.0) <= 12.0) & (Y > 45.0) & (Y <= 49.0) & arch_z
        spinous = (np.abs(X - 21.0) <= 3.0) & (Y > 49.0) & (Y <= 58.0) & arch_z
        labels[body | pedicles | lamina | spinous] = VERSE_LABELS[level]
        z0 += max(anterior, posterior) + gap_mm
    hu = np.where(labels > 0, 150.0, -100.0).astype(np.float32)
    grid = Grid(size=shape, spacing_mm=spacing, origin_lps_mm=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    ct = CTVolume(hu=hu, grid=grid, info=ScanInfo(path="synthetic", format="nifti", input_grid=grid,
                                                  slice_thickness_mm=spacing[2]))
    return ct, SpineSegmentation(labels=labels, body=None, levels=tuple(b[0] for b in bodies), backend="labels")


def _l1(anterior: float, posterior: float = 30.0, spacing=SPACING):
    """L1 between a normal L2 and T12 (30 mm boxes): its measurement."""
    ct, seg = _spine([("L2", 30.0, 30.0), ("L1", anterior, posterior), ("T12", 30.0, 30.0)], spacing)
    return {m.level: m for m in measure_levels(ct, seg).levels}["L1"]


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.0), (0.7, 0.7, 3.0), (1.0, 1.0, 2.0)])
def test_a_box_body_is_30_mm_high_everywhere_and_grade_0(spacing):
    m = _l1(30.0, spacing=spacing)
    assert m.heights_mm == {"anterior": 30.0, "middle": 30.0, "posterior": 30.0}
    assert m.height_ratios == {"anterior_posterior": 1.0, "middle_posterior": 1.0, "anterior_neighbours": 1.0,
                               "middle_neighbours": 1.0, "posterior_neighbours": 1.0, "mean_neighbours": 1.0}
    assert (m.genant_grade, m.deformity, m.flags) == (0, None, ())


def test_heights_of_a_drawn_box_profile():
    ct, seg = _spine([("L1", 30.0, 30.0)])
    vertebra = seg.labels == VERSE_LABELS["L1"]
    prof = sagittal_profile(vertebra, SPACING)
    # the spinal canal (12 mm) cuts the arch off: the profile is the body, 30 mm deep and high
    rows = np.nonzero(prof.fraction >= 0.5)
    assert np.ptp(rows[0]) * SPACING[1] == pytest.approx(DEPTH_MM, abs=SPACING[1])
    assert np.ptp(rows[1]) * SPACING[2] == pytest.approx(30.0, abs=SPACING[2])
    h = body_heights(prof, 0.0)
    assert isinstance(h, BodyHeights) and h.complete and h.consistent
    assert (h.anterior_mm, h.middle_mm, h.posterior_mm) == pytest.approx((30.0, 30.0, 30.0), abs=0.05)
    assert h.depth_mm == pytest.approx(DEPTH_MM, abs=1.0)
    assert h.as_dict() == {"anterior": 30.0, "middle": 30.0, "posterior": 30.0}


@pytest.mark.parametrize(("loss", "grade"), [(0.22, 1), (0.30, 2), (0.45, 3)])
def test_an_anterior_wedge_gets_its_genant_grade(loss, grade):
    m = _l1(30.0 * (1.0 - loss))
    assert (m.genant_grade, m.deformity) == (grade, "wedge")
    assert m.flags == ("suspected_fracture",)
    assert m.heights_mm["anterior"] == pytest.approx(30.0 * (1.0 - loss), abs=0.3)
    assert m.height_ratios["anterior_posterior"] == pytest.approx(1.0 - loss, abs=0.01)


def test_a_mild_wedge_of_15_percent_is_not_graded():
    m = _l1(25.5)  # 15%, as the physiological wedging of T11-T12
    assert (m.genant_grade, m.deformity, m.flags) == (0, None, ())


def test_a_body_30_percent_short_at_every_height_is_a_crush():
    m = _l1(21.0, 21.0)
    assert (m.genant_grade, m.deformity) == (2, "crush")
    assert m.height_ratios["anterior_posterior"] == 1.0 and m.height_ratios["mean_neighbours"] == pytest.approx(0.7)


def test_a_body_cut_by_the_scan_edge_is_not_graded():
    ct, seg = _spine([("L2", 30.0, 30.0), ("L1", 21.0, 30.0), ("T12", 30.0, 30.0)], margin_mm=0.0)
    measured = level_heights(ct, seg, seg.levels)
    assert not measured["L2"].complete and measured["L1"].complete
    assert grade_level("L2", measured, 1.0) is None
    # L1 is graded against T12 alone: its cut neighbour is no reference
    g = grade_level("L1", measured, 1.0)
    assert isinstance(g, GenantGrade) and (g.grade, g.kind) == (2, "wedge")
    levels = {m.level: m for m in measure_levels(ct, seg).levels}
    assert levels["L2"].flags == ("partial",) and levels["L2"].genant_grade is None
    assert levels["L2"].height_ratios == {}


@pytest.mark.parametrize(("anterior", "grade"), [(24.1, 0), (23.9, 1), (22.4, 2), (18.1, 2), (17.9, 3)])
def test_genant_grade_boundaries_at_20_25_and_40_percent(anterior, grade):
    # against a posterior height of 30 mm and two normal 30 mm neighbours: 1 - A / 30
    normal = BodyHeights(30.0, 30.0, 30.0, 30.0, 0.0)
    g = genant_grade(BodyHeights(anterior, 30.0, 30.0, 30.0, 0.0), (normal, normal), slice_mm=1.0)
    assert g.grade == grade and g.loss == pytest.approx(round(1.0 - anterior / 30.0, 3))
    assert g.kind == ("wedge" if grade else None)


def test_every_name_of_the_old_module_is_importable_from_the_package():
    names = {"GENANT_LOSS", "FRACTURE_MIN_GRADE", "HEIGHT_SLAB_MM", "BODY_GAP_MM", "NORMAL_SHAPE", "CRUSH_SHAPE",
             "CRUSH_NEIGHBOUR_SPREAD", "CONFIRM_LOSS", "MIN_HEIGHT_FRACTION", "POSTERIOR_CAP", "LABEL_REACH_MM",
             "OTHER_LABEL_SHARE", "BODY_OVERLAP", "BODY_MIN_MM", "HEIGHT_STEP_MM", "EDGE_FRACTION", "SagittalProfile",
             "BodyHeights", "GenantGrade", "sagittal_profile", "column_axes", "body_heights", "genant_grade",
             "crop_of", "touches_edge", "ct_body", "level_heights", "grade_level"}
    assert names <= set(heights.__all__)
    homes = (profile_module, levels_module, grade_module)
    for name in names:
        assert sum(getattr(m, name, None) is getattr(heights, name) for m in homes) >= 1, name
    assert heights.GENANT_LOSS == (0.20, 0.25, 0.40) and heights.FRACTURE_MIN_GRADE == 1
