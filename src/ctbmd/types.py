"""Typed dataclasses passed between the pipeline stages.

Coordinate conventions used everywhere in ctbmd
-----------------------------------------------
* **World frame**: DICOM patient coordinates, **LPS**, in mm: +x toward the
  patient's left, +y toward posterior, +z toward superior (head).
* **Canonical voxel frame**: every volume handed between stages is a NumPy array
  of shape ``(nx, ny, nz)`` indexed ``[i, j, k]`` whose axes point (as closely as
  the acquisition allows) toward L, P and S. It is the input reoriented with
  SimpleITK's ``DICOMOrient(image, "LPS")``; no resampling is involved, so voxel
  values are the input's values. ``affine_lps`` maps ``(i, j, k, 1)`` to LPS mm.
* Level names are ``"T11"``, ``"T12"``, ``"L1"`` ... ``"L5"``; label maps use the
  VerSe numbering (Löffler et al., Radiol Artif Intell 2020, doi
  10.1148/ryai.2020190138): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # annotations only: classify imports this module
    from ctbmd.classify import Category

#: VerSe label number for each level name (VerSe 2019/2020 numbering).
VERSE_LABELS: dict[str, int] = {
    **{f"C{i}": i for i in range(1, 8)},
    **{f"T{i}": 7 + i for i in range(1, 13)},
    **{f"L{i}": 19 + i for i in range(1, 7)},
    "T13": 28,
}
#: Inverse of :data:`VERSE_LABELS`.
VERSE_NAMES: dict[int, str] = {v: k for k, v in VERSE_LABELS.items()}
#: Levels ordered from cranial to caudal (T13 and L6 are transitional and sit
#: between T12/L1 and after L5 respectively).
LEVEL_ORDER: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["T13"]
    + [f"L{i}" for i in range(1, 7)]
)


#: QC flags that keep a level out of the patient-level BMD.
EXCLUDING_FLAGS: tuple[str, ...] = ("partial", "too_small", "metal", "suspected_fracture")


def level_index(name: str) -> int:
    """Return the cranio-caudal rank of a level name (``"T12"`` < ``"L1"``).

    Raises
    ------
    KeyError
        If ``name`` is not a vertebral level name known to VerSe.
    """
    return LEVEL_ORDER.index(name)


@dataclass(frozen=True)
class Grid:
    """Geometry of a voxel grid in the ITK/DICOM convention (LPS, mm).

    Attributes
    ----------
    size : tuple of int
        ``(nx, ny, nz)``, voxels along the index axes ``(i, j, k)``.
    spacing_mm : tuple of float
        Voxel size along ``(i, j, k)`` in mm.
    origin_lps_mm : tuple of float
        LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
    direction : tuple of float
        3x3 direction-cosine matrix, row-major; column ``c`` is the LPS unit
        vector of index axis ``c`` (the ITK ``GetDirection()`` layout).
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction, float).reshape(3, 3) * np.asarray(self.spacing_mm, float)
        a[:3, 3] = self.origin_lps_mm
        return a


@dataclass(frozen=True)
class ScanInfo:
    """What is known about the scan and where it came from.

    Attributes
    ----------
    path : str
        The file or DICOM folder given by the user.
    format : str
        ``"nifti"``, ``"nrrd"``, ``"mha"`` or ``"dicom"``.
    input_grid : Grid
        Geometry of the input as stored (before reorientation); outputs that must
        lie "on the input's grid" are resampled onto it.
    series_uid, kvp, contrast_agent, convolution_kernel, manufacturer, patient_id :
        DICOM attributes when available, else ``None``. ``kvp`` is in kV.
    slice_thickness_mm : float or None
        DICOM SliceThickness (mm) when known.
    notes : tuple of str
        Human-readable remarks from reading, e.g. which DICOM series was chosen.
    source_files : tuple of str
        For a DICOM series: its slice files in the order of the input grid's
        slice index k (inferior to superior for axial), so that slice k of any
        map on the input grid belongs to ``source_files[k]`` (DICOM SEG frames,
        :mod:`ctbmd.report.dicom`). Empty for other formats.
    """

    path: str
    format: str
    input_grid: Grid
    series_uid: str | None = None
    kvp: float | None = None
    contrast_agent: str | None = None
    convolution_kernel: str | None = None
    manufacturer: str | None = None
    patient_id: str | None = None
    slice_thickness_mm: float | None = None
    notes: tuple[str, ...] = ()
    source_files: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in Hounsfield units in the canonical LPS voxel frame.

    Attributes
    ----------
    hu : numpy.ndarray
        float32 array, shape ``(nx, ny, nz)``; axes point toward patient Left,
        Posterior, Superior. RescaleSlope/Intercept are applied and padding
        values (below -1024 HU) are set to -1024 HU (air).
    grid : Grid
        Geometry of ``hu`` (its ``direction`` is close to identity).
    info : ScanInfo
        Provenance and acquisition attributes.
    """

    hu: np.ndarray
    grid: Grid
    info: ScanInfo

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the canonical axes (L, P, S)."""
        return self.grid.spacing_mm

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping canonical voxel index to LPS mm."""
        return self.grid.affine_lps

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices, shape ``(..., 3)``, to LPS mm, shape ``(..., 3)``."""
        a = self.affine_lps
        return np.asarray(ijk, float) @ a[:3, :3].T + a[:3, 3]


@dataclass(frozen=True)
class VertebraRecord:
    """What the builtin labeller saw at one vertebra (one segment of the column).

    Attributes
    ----------
    name : str or None
        Level name given (``"S"`` for the sacrum), None when unnamed or refused.
    centre_lps_mm : tuple of float
        Body centre at mid-height, LPS mm.
    height_mm, width_mm : float
        Disc-to-disc height along the canal and body width, mm.
    complete : bool
        Whether discs bound it on both sides (False: cut by the scan's edge or
        the end of the column).
    rib_left, rib_right : float
        Confidence (0-1) that a rib articulates with it on that side.
    rib_reach_left_mm, rib_reach_right_mm : float or None
        Lateral reach of that rib from the canal line, mm.
    lung : float
        Fraction (0-1) of aerated lung beside the body.
    sacral : float
        Confidence (0-1) of sacral alae in its upper part.
    ala_mm : float or None
        Shorter lateral reach of body-level bone below its upper disc, mm.
    """

    name: str | None
    centre_lps_mm: tuple[float, float, float]
    height_mm: float
    width_mm: float
    complete: bool
    rib_left: float
    rib_right: float
    rib_reach_left_mm: float | None
    rib_reach_right_mm: float | None
    lung: float
    sacral: float
    ala_mm: float | None


@dataclass(frozen=True)
class AnchorRecord:
    """An anatomical anchor in view: ``kind`` (``sacrum``, ``lowest_rib``, ``first_rib``), the name it
    implies for its vertebra in standard anatomy, the name given there, and whether they agree."""

    kind: str
    implies: str
    named: str | None
    agrees: bool


@dataclass(frozen=True)
class LabellingRecord:
    """How the builtin labeller named the column (``result.json`` ``labelling``).

    Attributes
    ----------
    vertebrae : tuple of VertebraRecord
        Every vertebra found along the column, cranial to caudal.
    anchors : tuple of AnchorRecord
        Anchors in view.
    best : str
        The chosen labelling, e.g. ``"T10-L5 over the sacrum (12 rib pairs, 5 lumbar)"``.
    runner_up : str or None
        The best labelling that names a measured level differently.
    runner_up_names : tuple of str or None
        Its names, cranial to caudal, aligned with ``vertebrae``.
    margin : float
        Log-likelihood margin of ``best`` over ``runner_up`` (inf without one).
    refusal : str or None
        Why no names were given (then the run stops with exit code 4).
    overview : numpy.ndarray or None
        float32 ``(nu, ns)``: a coronal maximum-intensity view of the straightened
        column (u -110..110 mm by arc length, 2 mm steps, caudal row first), for the report.
    overview_s_mm : numpy.ndarray or None
        Arc length of each ``overview`` row, mm.
    segment_s_mm : tuple of tuple of float
        ``(s_lo, s_hi)`` of each vertebra on the overview's arc length, cranial to caudal.
    """

    vertebrae: tuple[VertebraRecord, ...]
    anchors: tuple[AnchorRecord, ...]
    best: str
    runner_up: str | None
    runner_up_names: tuple[str | None, ...] | None
    margin: float
    refusal: str | None = None
    overview: np.ndarray | None = None
    overview_s_mm: np.ndarray | None = None
    segment_s_mm: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class SpineSegmentation:
    """Labelled vertebrae on a :class:`CTVolume`'s canonical grid.

    Attributes
    ----------
    labels : numpy.ndarray
        uint8, shape ``(nx, ny, nz)`` of the CT; whole vertebra (body and posterior
        arch) in VerSe numbering, 0 = background. It may hold more levels than
        ``levels`` (the builtin labeller draws every level it names, T1-L5).
    body : numpy.ndarray or None
        Same shape and numbering, vertebral body only (no posterior elements),
        when the backend provides it; otherwise the ROI stage derives it.
    levels : tuple of str
        Levels to measure, present in ``labels``, cranial to caudal.
    backend : str
        ``"builtin"``, ``"labels"`` or ``"totalsegmentator"``.
    level_flags : dict
        Level name -> flags raised by the segmenter (e.g. ``"partial"``).
    anchors : dict
        How the labels were anchored (``"sacrum"``, ``"lowest_rib"``, ``"first_rib"``,
        ``"labels"``), for the report.
    warnings : tuple of str
        Patient-level remarks, e.g. short T12 ribs.
    labelling : LabellingRecord or None
        The builtin labeller's evidence and decision; None for label maps.
    known_boxes : dict or None
        The bounding boxes of ``labels`` (as :attr:`boxes`) when the segmenter
        already knows them (the builtin labeller maps them from its working
        grid); None to find them from ``labels``. They must describe ``labels``:
        give None when making a segmentation with other labels.
    """

    labels: np.ndarray
    body: np.ndarray | None
    levels: tuple[str, ...]
    backend: str
    level_flags: dict[str, list[str]] = field(default_factory=dict)
    anchors: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    labelling: LabellingRecord | None = None
    known_boxes: dict[int, tuple[slice, ...]] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def boxes(self) -> dict[int, tuple[slice, ...]]:
        """Bounding box (one slice per axis) of each label value in ``labels``, found once.

        See :func:`ctbmd.masks.label_boxes`; the stages after segmentation look
        at each level inside its box instead of scanning the whole volume. The
        boxes are ``known_boxes`` when given, otherwise found on first use and
        cached, so ``labels`` must not be changed after the segmentation is made.
        """
        if self.known_boxes is not None:
            return dict(self.known_boxes)
        from ctbmd.masks import label_boxes

        return label_boxes(self.labels)


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
    flags: tuple[str, ...]
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


CalibrationMethod = Literal["phantomless", "rods", "scanner_profile"]


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

    phase: str
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
    category_system: str
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
