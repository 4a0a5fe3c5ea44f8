"""Phantom calibration with K2HPO4 rods, in the Mindways QCT Pro convention.

Two ways to calibrate with a rod phantom:

* **Synchronous** (:func:`find_rods`, :func:`fit_rods`, :func:`rod_calibration`):
  the phantom lies under the patient in the same scan. Its rods are found in
  the image, their mean HU is regressed on their K2HPO4 concentration, and the
  line ``HU = sigma_CT K + beta_CT`` converts the vertebrae's HU to
  K2HPO4-equivalent BMD (Cann & Genant, JCAT 1980;4:493-500).
* **Asynchronous** (:class:`ScannerProfile`, :func:`make_profile`,
  :func:`profile_calibration`): the phantom is scanned on its own (at the same
  kVp and reconstruction kernel), the fitted line is saved as a scanner
  profile, and patients scanned later are calibrated with it. Wang et al.
  (Sci Rep 2017;7:6284) found asynchronous and synchronous BMD to agree within
  1.4-6.7%. Because a bigger patient hardens the beam, the profile's slope is
  scaled to the patient's size with the effective-energy table of
  :mod:`ctbmd.calibrate.energy` (see :func:`profile_calibration`).

QCT Pro convention (QCT PRO User Guide v5.0, Mindways Software 2011; the
constants are in :mod:`ctbmd.materials`): with a phantom certificate that
gives each rod's K2HPO4 ``K`` and water ``W`` (both mg/cm^3), the fit is
``HU - W = sigma_ref K + beta_ref`` and converts to ``sigma_CT = sigma_ref -
0.2174``, ``beta_CT = beta_ref + 999.6``
(:func:`ctbmd.materials.qct_pro_from_reference`). Rods given by ``K`` alone
are taken to be QCT-Pro-equivalent solutions (water ``999.6 - 0.2174 K``), for
which this is the same as fitting ``HU = sigma_CT K + beta_CT`` directly.

Frame: rod centres are LPS mm ``(x, y)`` (+x toward the patient's left, +y
posterior). A :class:`RodSpec` lists its rods in order of increasing LPS x,
i.e. left to right on a radiological display (the patient's right on the
viewer's left). Rods run along z.

Errors: a malformed rod description raises :class:`~ctbmd.errors.UsageError`
(exit 2); a scan in which the rods cannot be found or do not fit a line
raises :class:`~ctbmd.errors.InvalidInputError` (exit 3), ``"calibration rods
not found: <why>"``; a missing or malformed profile raises
:class:`~ctbmd.errors.InvalidInputError` (exit 3); a profile that does not
match the scan (kVp, kernel) raises :class:`~ctbmd.errors.UsageError` (exit 2).

The code lives in :mod:`ctbmd.calibrate.rod_spec` (the phantom's description
and the shared constants), :mod:`ctbmd.calibrate.rod_search` and
:mod:`ctbmd.calibrate.rod_find` (finding the rods in the image),
:mod:`ctbmd.calibrate.rod_fit` (the line and its calibration) and
:mod:`ctbmd.calibrate.rod_profile` (scanner profiles); this module gathers
their public names.
"""


from ctbmd.calibrate.rod_find import RodMeasurement, RodReading, SliceRange, find_rods, slice_range
from ctbmd.calibrate.rod_fit import RodFit, fit_rods, monoenergetic_equivalent_kev, rod_calibration, t_quantile_975
from ctbmd.calibrate.rod_profile import (ScannerProfile, check_profile, load_profile, make_profile,
                                         profile_calibration, save_profile)
from ctbmd.calibrate.rod_search import DiscBlob, RodSample, RowHypothesis
from ctbmd.calibrate.rod_spec import (BODY_HU, DEFAULT_DIAMETER_MM, DEFAULT_ROD_SPEC, DEFAULT_Z_FRACTION,
                                      ENERGY_SEARCH_KEV, MAX_ABS_BETA_HU, MAX_KVP_DIFFERENCE, MIN_CONTRAST_HU,
                                      MIN_PATIENT_DEPTH_MM, MIN_R2, PROFILE_SCHEMA, SAMPLE_RADIUS_FRACTION,
                                      SIGMA_RANGE, Rod, RodSpec, parse_rod_spec)

__all__ = ["BODY_HU", "DEFAULT_DIAMETER_MM", "DEFAULT_ROD_SPEC", "DEFAULT_Z_FRACTION", "ENERGY_SEARCH_KEV",
           "MAX_ABS_BETA_HU", "MAX_KVP_DIFFERENCE", "MIN_CONTRAST_HU", "MIN_PATIENT_DEPTH_MM", "MIN_R2",
           "PROFILE_SCHEMA", "SAMPLE_RADIUS_FRACTION", "SIGMA_RANGE", "DiscBlob", "Rod", "RodFit", "RodMeasurement",
           "RodReading", "RodSample", "RodSpec", "RowHypothesis", "ScannerProfile", "SliceRange", "check_profile",
           "find_rods", "fit_rods", "load_profile", "make_profile", "monoenergetic_equivalent_kev", "parse_rod_spec",
           "profile_calibration", "rod_calibration", "save_profile", "slice_range", "t_quantile_975"]
