"""Stage 3: calibration of HU to K2HPO4-equivalent BMD (mg/cm^3), in the Mindways QCT Pro convention.

Three ways, best first where a site has them:

* :mod:`ctbmd.calibrate.rods`: a **rod phantom** in the scan (synchronous
  QCT), or a **scanner profile** made from a phantom scan on another day
  (asynchronous; agrees with synchronous at 1.4-6.7%, Wang et al., Sci Rep 2017);
* :mod:`ctbmd.calibrate.internal`: **phantomless** calibration, an effective
  energy prior from the kVp and the patient's size (:mod:`ctbmd.calibrate.energy`)
  refined by subcutaneous fat, with checks on blood, muscle and air.

Every method returns a :class:`ctbmd.types.Calibration`:
``bmd_mg_cm3 = (HU - beta_ct) / sigma_ct``.
"""

from ctbmd.calibrate.energy import EnergyPrior, energy_prior, water_equivalent_diameter_cm
from ctbmd.calibrate.internal import TissueSample, fit_calibration, k2hpo4_to_caha, reference_tissues

__all__ = ["EnergyPrior", "TissueSample", "energy_prior", "fit_calibration", "k2hpo4_to_caha",
           "reference_tissues", "water_equivalent_diameter_cm"]
