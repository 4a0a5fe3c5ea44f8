"""Unit checks of label-map conversion, calibration physics and classification."""

import numpy as np
import pytest

from ctbmd.calibrate import fit_calibration, k2hpo4_to_caha
from ctbmd.materials import hu_from_mu, linear_attenuation
from ctbmd.classify import acr_category, pickhardt_flag
from ctbmd.errors import UsageError
from ctbmd.segment.labelmaps import detect_label_map, to_verse
from ctbmd.types import ReferenceTissue


def test_total_to_verse():
    lab = np.array([0, 31, 32, 27, 26, 5])
    assert to_verse(lab, "total").tolist() == [0, 20, 19, 24, 0, 0]
    assert detect_label_map(np.array([19, 20, 24])) == "verse"
    assert detect_label_map(np.array([27, 31])) == "total"
    with pytest.raises(UsageError):
        to_verse(lab, "nonsense")


def _theoretical_tissues(energy_kev):
    hu = {m: float(hu_from_mu(linear_attenuation(m, energy_kev), energy_kev))
          for m in ("air", "adipose", "muscle", "blood")}
    names = {"air": "air", "adipose": "subcutaneous_fat", "muscle": "paraspinal_muscle", "blood": "aortic_blood"}
    return {names[m]: ReferenceTissue(names[m], v, 10.0, 1000) for m, v in hu.items()}


def test_calibration_recovers_energy_and_maps_water_to_zero():
    cal = fit_calibration(_theoretical_tissues(70.0))
    assert cal.ok
    assert abs(cal.effective_energy_kev - 70.0) <= 2.0
    assert abs(cal.to_mg_cm3(0.0)) < 1.0
    # K2HPO4 at 100 mg/cm3 in water raises HU by ~1.1-1.5 HU per mg/cm3 at 70 keV.
    assert 0.6 < cal.slope < 1.0


def test_classification_thresholds():
    assert acr_category(121) == "normal"
    assert acr_category(120) == "osteopenia"
    assert acr_category(80) == "osteopenia"
    assert acr_category(79.9) == "osteoporosis"
    assert pickhardt_flag(100)["flag"] == "osteoporosis_likely"
    assert pickhardt_flag(150)["flag"] == "osteoporosis_possible"
    assert pickhardt_flag(170)["flag"] == "osteoporosis_unlikely"
    assert abs(k2hpo4_to_caha(100) - 107.68) < 1e-9
