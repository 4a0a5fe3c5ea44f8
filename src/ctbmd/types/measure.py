"""What is measured and concluded: levels, reference tissues, calibration, contrast phase, the patient and a
model's values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: classify imports this module
    from ctbmd.classify import Category

#: A level's QC flag (:func:`ctbmd.roi.measure_level`).
QcFlag = Literal["partial", "metal", "suspected_fracture", "hyperdense_focus", "too_small"]
#: QC flags that keep a level out of the patient-level BMD.
EXCLUDING_FLAGS: tuple[QcFlag, ...] = ("partial", "too_small", "metal", "suspected_fracture")
#: How BMD was calibrated: internal (reference tissues), rods in the scan, or a scanner's rod profile.
CalibrationMethod = Literal["phantomless", "rods", "scanner_profile"]
#: The contrast phase (:func:`ctbmd.classify.detect_contrast_phase`).
PhaseName = Literal["native", "portal_venous", "arterial", "contrast", "unknown"]



@dataclass(frozen=True)
class LevelMeasurement:
    """Trabecular ROI statistics of one vertebral body (HU, before calibration).

    Attributes
    ----------
    level : str
        Level name, e.g. ``"L1"``.
    centroid_lps_mm : tuple of float
        Centroid of the whole vertebra label (body and arch), LPS mm.
    roi_voxels : int
        Voxels in the trabecular ROI.
    roi_volume_mm3 : float
        ROI volume in mm^3.
    hu_median, hu_mean, hu_sd : float or None
        Median, mean and standard deviation of HU in the ROI; ``None`` when the
        ROI is empty.
    heights_mm : dict
        Vertebral body heights ``anterior``, ``middle``, ``posterior`` in mm: corner-to-corner
        distances of the body without its posterior elements, in the mid-sagittal slab
        (:func:`ctbmd.heights.body_heights`); 0 when no body was found.
    flags : tuple of str
        QC flags: ``partial``, ``too_small``, ``metal``, ``suspected_fracture``,
        ``hyperdense_focus``.
    genant_grade : int or None
        Genant semi-quantitative grade from the heights (0 normal, 1 mild, 2 moderate,
        3 severe; Genant et al., J Bone Miner Res 1993, doi 10.1002/jbmr.5650080915);
        None when the level is cut by the scan's edge or has no body (:func:`ctbmd.heights.genant_grade`).
    deformity : str or None
        ``wedge``, ``biconcave`` or ``crush`` when ``genant_grade`` >= 1.
    height_ratios : dict
        The ratios the grade comes from: ``anterior_posterior``, ``middle_posterior`` and, with
        measured neighbours, ``anterior_neighbours``, ``middle_neighbours``,
        ``posterior_neighbours``, ``mean_neighbours``.
    """

    level: str
    centroid_lps_mm: tuple[float, float, float]
    roi_voxels: int
    roi_volume_mm3: float
    hu_median: float | None
    hu_mean: float | None
    hu_sd: float | None
    heights_mm: dict[str, float]
    flags: tuple[QcFlag, ...]
    genant_grade: int | None = None
    deformity: str | None = None
    height_ratios: dict[str, float] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """True when the level may enter a patient-level value (no exclusion flag)."""
        return self.hu_median is not None and not set(EXCLUDING_FLAGS).intersection(self.flags)

    @property
    def reported_hu(self) -> float | None:
        """The ROI HU that QCT reports and BMD is computed from: the mean, or the median when no mean was recorded."""
        return self.hu_mean if self.hu_mean is not None else self.hu_median


@dataclass(frozen=True)
class ReferenceTissue:
    """HU statistics of one internal reference tissue.

    Attributes
    ----------
    name : str
        ``"air"``, ``"subcutaneous_fat"``, ``"paraspinal_muscle"`` or ``"aortic_blood"``.
    hu_median, hu_iqr : float
        Median and interquartile range of HU in the sampled region.
    n_voxels : int
        Voxels sampled.
    used_in_fit : bool
        Whether the tissue entered the calibration fit (contrast-enhanced blood
        is measured but not used).
    """

    name: str
    hu_median: float
    hu_iqr: float
    n_voxels: int
    used_in_fit: bool = True


@dataclass(frozen=True)
class Calibration:
    """Linear HU -> K2HPO4-equivalent BMD map, in the Mindways QCT Pro convention.

    ``HU = sigma_ct * BMD + beta_ct``, so ``bmd_mg_cm3 = (HU - beta_ct) / sigma_ct``
    (QCT PRO User Guide v5.0; :func:`ctbmd.materials.qct_pro_line`), and
    ``slope = 1 / sigma_ct``, ``intercept = -beta_ct / sigma_ct``. CaHA follows
    from Faulkner et al. 1993 (see :func:`ctbmd.calibrate.k2hpo4_to_caha`).

    Attributes
    ----------
    ok : bool
        False when calibration could not be done; then ``reason`` says why and
        the line is ``None``.
    method : str
        ``phantomless`` (internal: energy prior plus reference tissues),
        ``rods`` (synchronous phantom in the scan) or ``scanner_profile``
        (asynchronous phantom calibration).
    description : str
        The method in words, for the report.
    sigma_ct : float or None
        HU per mg/cm^3 K2HPO4.
    beta_ct : float or None
        HU at zero K2HPO4.
    sigma_ct_95 : tuple of float or None
        95% interval of ``sigma_ct`` (low, high) from the energy's uncertainty
        (phantomless) or the fit's standard error (rods, profile).
    beta_ct_95 : tuple of float or None
        95% interval of ``beta_ct`` (rods); None where it is taken as exact.
    effective_energy_kev, energy_sd_kev : float or None
        Effective energy of the beam and its posterior SD (keV).
    kvp : float or None
        Tube voltage used (kV); ``kvp_source``: ``header``, ``option``,
        ``assumed``, ``profile`` or ``None``.
    dw_cm : float or None
        Water-equivalent diameter at the measured levels (AAPM Report 220), cm.
    tissues : dict
        Name -> :class:`ReferenceTissue`.
    residuals_hu : dict
        Name -> measured minus expected HU at the fitted energy.
    qc_flags : tuple of str
        Quality warnings that do not stop the calibration (tissue misfit, air
        sample off, muscle out of range, energy near the grid edge, a rod hidden
        in its block...).
    details : dict
        Method-specific record (the rods and their HU, the profile used).
    reason : str or None
        Why calibration failed (``ok`` False), else None.
    """

    ok: bool
    method: CalibrationMethod
    description: str
    sigma_ct: float | None
    beta_ct: float | None
    sigma_ct_95: tuple[float, float] | None
    effective_energy_kev: float | None
    energy_sd_kev: float | None
    kvp: float | None
    kvp_source: str | None
    dw_cm: float | None
    tissues: dict[str, ReferenceTissue]
    residuals_hu: dict[str, float]
    qc_flags: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)
    reason: str | None = None
    beta_ct_95: tuple[float, float] | None = None

    @property
    def slope(self) -> float | None:
        """mg/cm^3 per HU (``1 / sigma_ct``)."""
        return None if not self.ok or self.sigma_ct is None else 1.0 / self.sigma_ct

    @property
    def intercept(self) -> float | None:
        """mg/cm^3 (``-beta_ct / sigma_ct``)."""
        return None if not self.ok or self.sigma_ct is None else -self.beta_ct / self.sigma_ct

    def to_mg_cm3(self, hu: float | None) -> float | None:
        """K2HPO4-equivalent density (mg/cm^3) of a HU value; ``None`` if uncalibrated."""
        if not self.ok or hu is None or self.sigma_ct is None:
            return None
        return float((hu - self.beta_ct) / self.sigma_ct)

    def interval_mg_cm3(self, hu: float | None) -> tuple[float, float] | None:
        """95% interval (mg/cm^3) of the BMD of a HU value from the line's uncertainty.

        The extremes of ``(HU - beta) / sigma`` over the corners of the
        ``sigma_ct_95`` x ``beta_ct_95`` box (conservative: the two are treated
        as independent). ``None`` if uncalibrated or if the slope's interval
        reaches zero (then no interval can be given).
        """
        if not self.ok or hu is None or self.sigma_ct_95 is None or min(self.sigma_ct_95) <= 0:
            return None
        betas = self.beta_ct_95 or (self.beta_ct, self.beta_ct)
        ends = [(hu - b) / s for s in self.sigma_ct_95 for b in betas]
        return float(min(ends)), float(max(ends))


@dataclass(frozen=True)
class ContrastPhase:
    """Detected contrast phase.

    Attributes
    ----------
    phase : str
        ``"native"``, ``"contrast"`` (enhanced, phase unknown), ``"arterial"``,
        ``"portal_venous"`` or ``"unknown"``.
    aorta_hu : float or None
        Median HU of aortic blood used for the decision.
    dicom_contrast_agent : str or None
        ContrastBolusAgent (0018,0010) when present.
    evidence : str
        One line saying how the phase was decided.
    """

    phase: PhaseName
    aorta_hu: float | None
    dicom_contrast_agent: str | None
    evidence: str

    @property
    def enhanced(self) -> bool:
        """True for any contrast-enhanced phase."""
        return self.phase in {"contrast", "arterial", "portal_venous"}


@dataclass(frozen=True)
class PickhardtFlag:
    """The L1 attenuation screen of Pickhardt et al. (Ann Intern Med 2013;158:588-595).

    Attributes
    ----------
    l1_hu : float or None
        Median trabecular HU of L1, rounded to 0.1 HU; None when L1 is not usable.
    flag : {"osteoporosis_likely", "osteoporosis_possible", "osteoporosis_unlikely", "not_available"}
        ``likely`` at or below ``specific_hu``, ``possible`` at or below ``sensitive_hu``.
    specific_hu, sensitive_hu : float or None
        The thresholds applied (:data:`ctbmd.classify.PICKHARDT_SPECIFIC_HU`, ``..._SENSITIVE_HU``);
        None when not available.
    """

    l1_hu: float | None
    flag: Literal["osteoporosis_likely", "osteoporosis_possible", "osteoporosis_unlikely", "not_available"]
    specific_hu: float | None = None
    sensitive_hu: float | None = None

    def to_dict(self) -> dict:
        """The ``pickhardt_l1`` entry of ``result.json`` (thresholds only when the flag was computed)."""
        out: dict = {"l1_hu": self.l1_hu, "flag": self.flag}
        if self.specific_hu is not None:
            out["thresholds_hu"] = {"specific": self.specific_hu, "sensitive": self.sensitive_hu}
        return out


@dataclass(frozen=True)
class PatientClassification:
    """Patient-level BMD and category.

    Attributes
    ----------
    bmd_mg_cm3 : float or None
        Mean K2HPO4-equivalent BMD of ``levels_used`` (None when uncalibrated),
        from the ROI mean HU, as QCT reports.
    hu_mean : float or None
        Mean over ``levels_used`` of the trabecular ROI mean HU.
    levels_used : tuple of str
        Lumbar levels averaged (L1 and L2 when both are usable).
    category : str or None
        ``"normal"``, ``"osteopenia"`` or ``"osteoporosis"`` (ACR-QCT), None when
        BMD is unavailable.
    category_system : str
        ``"ACR-QCT"``.
    pickhardt : PickhardtFlag
        L1 HU screening flag (Pickhardt et al., Ann Intern Med 2013).
    notes : tuple of str
        Caveats (level substitution, contrast, an uncertain category).
    bmd_ci95_mg_cm3 : tuple of float or None
        95% interval of ``bmd_mg_cm3`` from the calibration's uncertainty.
    category_certain : bool or None
        False when the interval spans 80 or 120 mg/cm^3.
    hu_median_mean : float or None
        Mean over ``levels_used`` of the trabecular ROI median HU.
    """

    bmd_mg_cm3: float | None
    hu_mean: float | None
    levels_used: tuple[str, ...]
    category: Category | None
    category_system: Literal["ACR-QCT"]
    pickhardt: PickhardtFlag
    notes: tuple[str, ...] = ()
    bmd_ci95_mg_cm3: tuple[float, float] | None = None
    category_certain: bool | None = None
    hu_median_mean: float | None = None


@dataclass(frozen=True)
class LevelPrediction:
    """The model's value for one level.

    Attributes
    ----------
    level : str
    value : float
        mg/cm³ (K2HPO4-equivalent, as the training reference) or a T-score.
    member_sd : float
        SD of the ensemble members' values (a spread, not a confidence interval).
    class_probabilities : dict or None
        ``normal``/``osteopenia``/``osteoporosis`` -> probability when the model has a class head.
    """

    level: str
    value: float
    member_sd: float
    class_probabilities: dict[str, float] | None = None


@dataclass(frozen=True)
class ModelOutput:
    """What a model added to one run.

    Attributes
    ----------
    model : dict
        :meth:`ctbmd.model.store.BmdModel.describe`.
    target : str
        ``bmd_mg_cm3`` or ``t_score``.
    levels : dict
        Level -> :class:`LevelPrediction`.
    skipped : dict
        Level -> why it has no model value.
    """

    model: dict
    target: str
    levels: dict[str, LevelPrediction]
    skipped: dict[str, str]
