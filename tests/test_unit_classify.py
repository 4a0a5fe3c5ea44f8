"""Unit tests of :mod:`ctbmd.classify`: thresholds at and around their boundaries, the "uncertain" rule and the
choice of the patient's levels, on plain data with known answers.

Calibration lines are written here in the QCT Pro convention, ``HU = sigma_ct * BMD + beta_ct``; with
``sigma_ct = 1`` and ``beta_ct = 0`` the BMD (mg/cm^3) equals the HU, so each test states its BMD directly.
"""

from __future__ import annotations

import pytest

from ctbmd.classify import (ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, WHO_OSTEOPENIA_T, WHO_OSTEOPOROSIS_T,
                            acr_category, classify_patient, pickhardt_flag, who_category)
from ctbmd.types import Calibration, ContrastPhase, LevelMeasurement

try:
    from ctbmd.classify import CATEGORIES
except ImportError:  # before the categories had one home
    CATEGORIES = ("normal", "osteopenia", "osteoporosis")
NORMAL, OSTEOPENIA, OSTEOPOROSIS = CATEGORIES
NATIVE = ContrastPhase("native", 60.0, None, "aortic blood 60 HU < 100, no contrast tag")


def line(sigma_95: tuple[float, float] | None = None, ok: bool = True) -> Calibration:
    """The identity calibration (BMD = HU), with a 95% interval of the slope when given."""
    return Calibration(ok=ok, method="phantomless", description="test line", sigma_ct=1.0 if ok else None,
                       beta_ct=0.0 if ok else None, sigma_ct_95=sigma_95, effective_energy_kev=None,
                       energy_sd_kev=None, kvp=None, kvp_source=None, dw_cm=None, tissues={}, residuals_hu={},
                       reason=None if ok else "no reference tissue")


def level(name: str, hu: float, flags: tuple[str, ...] = ()) -> LevelMeasurement:
    return LevelMeasurement(level=name, centroid_lps_mm=(0.0, 0.0, 0.0), roi_voxels=1000, roi_volume_mm3=1000.0,
                            hu_median=hu, hu_mean=hu, hu_sd=20.0, heights_mm={}, flags=flags)


def flag(p) -> str:
    return p.flag if hasattr(p, "flag") else p["flag"]


def test_categories_are_ordered_from_high_to_low_bmd():
    assert CATEGORIES == ("normal", "osteopenia", "osteoporosis")
    assert (ACR_OSTEOPOROSIS_MG_CM3, ACR_NORMAL_MG_CM3) == (80.0, 120.0)
    assert (WHO_OSTEOPOROSIS_T, WHO_OSTEOPENIA_T) == (-2.5, -1.0)


@pytest.mark.parametrize("bmd, category", [
    (200.0, NORMAL), (120.1, NORMAL), (120.0, OSTEOPENIA),  # > 120 normal: 120 itself is osteopenia
    (100.0, OSTEOPENIA), (80.0, OSTEOPENIA), (79.9, OSTEOPOROSIS), (0.0, OSTEOPOROSIS), (-5.0, OSTEOPOROSIS)])
def test_acr_categories_at_and_around_80_and_120(bmd, category):
    assert acr_category(bmd) == category


@pytest.mark.parametrize("t, category", [
    (1.0, NORMAL), (-1.0, NORMAL), (-1.01, OSTEOPENIA),  # < -1 osteopenia: -1 itself is normal
    (-2.49, OSTEOPENIA), (-2.5, OSTEOPOROSIS), (-4.0, OSTEOPOROSIS)])  # <= -2.5 osteoporosis
def test_who_categories_at_and_around_minus_1_and_minus_2_5(t, category):
    assert who_category(t) == category


@pytest.mark.parametrize("hu, expected", [
    (None, "not_available"), (90.0, "osteoporosis_likely"), (110.0, "osteoporosis_likely"),
    (110.1, "osteoporosis_possible"), (160.0, "osteoporosis_possible"), (160.1, "osteoporosis_unlikely")])
def test_pickhardt_l1_flag_at_110_and_160_hu(hu, expected):
    assert flag(pickhardt_flag(hu)) == expected


def test_patient_bmd_is_the_mean_of_l1_and_l2():
    p = classify_patient([level("L1", 100.0), level("L2", 110.0), level("L3", 300.0)], line((0.99, 1.01)), NATIVE)
    assert p.levels_used == ("L1", "L2")
    assert p.bmd_mg_cm3 == 105.0 and p.hu_mean == 105.0 and p.category == OSTEOPENIA
    assert p.category_certain is True and p.bmd_ci95_mg_cm3 == (104.0, 106.1)
    assert p.notes == ()  # L1 and L2 used, native scan, interval clear of both thresholds


@pytest.mark.parametrize("sigma_95, certain, spans", [
    ((0.8, 1.25), False, "spans 120 mg/cm^3"),  # 100 / 0.8 = 125: the interval 80-125 crosses 120
    ((0.5, 2.0), False, "spans 80 and 120 mg/cm^3"),  # 50-200
    ((0.95, 1.05), True, None),  # 95-105
    ((1.0, 1.25), True, None),  # 80-100: reaching 80 is not spanning it
])
def test_an_interval_that_spans_a_threshold_makes_the_category_uncertain(sigma_95, certain, spans):
    p = classify_patient([level("L1", 100.0), level("L2", 100.0)], line(sigma_95), NATIVE)
    assert p.category == OSTEOPENIA  # the category itself is always that of the point estimate
    assert p.category_certain is certain
    uncertain = [n for n in p.notes if n.startswith("category uncertain")]
    if spans is None:
        assert uncertain == []
    else:
        assert len(uncertain) == 1 and uncertain[0].endswith(spans)


def test_without_an_interval_or_a_calibration_certainty_is_not_claimed():
    p = classify_patient([level("L1", 100.0), level("L2", 100.0)], line(None), NATIVE)
    assert p.category == OSTEOPENIA and p.category_certain is None and p.bmd_ci95_mg_cm3 is None
    p = classify_patient([level("L1", 100.0), level("L2", 100.0)], line(ok=False), NATIVE)
    assert p.category is None and p.bmd_mg_cm3 is None and p.hu_mean == 100.0
    assert "calibration unavailable: HU only, no ACR category" in p.notes


@pytest.mark.parametrize("flags, used", [
    ({}, ("L1", "L2")),
    ({"L1": ("partial",)}, ("L2", "L3")),
    ({"L2": ("suspected_fracture",)}, ("L1", "L3")),
    ({"L1": ("metal",), "L2": ("too_small",)}, ("L3", "L4")),
    ({"L1": ("partial",), "L2": ("partial",), "L3": ("partial",)}, ("L4",)),
])
def test_unusable_levels_are_replaced_by_the_nearest_usable_lumbar_levels(flags, used):
    levels = [level(n, 100.0, flags.get(n, ())) for n in ("T12", "L1", "L2", "L3", "L4", "L5")]
    p = classify_patient(levels, line((0.99, 1.01)), NATIVE)
    assert p.levels_used == used
    if used == ("L1", "L2"):
        assert not any(n.startswith("L1/L2 not both usable") for n in p.notes)
    else:
        assert f"L1/L2 not both usable; used {', '.join(used)}" in p.notes
    if len(used) < 2:  # T12 and L5 never stand in
        assert p.category is None and p.bmd_mg_cm3 is None
        assert "fewer than two usable lumbar levels: no patient category" in p.notes


def test_contrast_is_noted_and_pickhardt_needs_a_usable_l1():
    arterial = ContrastPhase("arterial", 250.0, None, "aortic blood 250 HU >= 200")
    p = classify_patient([level("L1", 100.0, ("partial",)), level("L2", 100.0), level("L3", 100.0)],
                         line((0.99, 1.01)), arterial)
    assert any(n.startswith("contrast-enhanced (arterial)") for n in p.notes)
    assert flag(p.pickhardt) == "not_available"
    p = classify_patient([level("L1", 100.0), level("L2", 100.0)], line((0.99, 1.01)), NATIVE)
    assert flag(p.pickhardt) == "osteoporosis_likely"
