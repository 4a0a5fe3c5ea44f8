"""Vertebral-body crops and per-vertebra features for the BMD model.

A crop is cut around the centre of a level's trabecular ROI (from
:func:`ctbmd.roi.measure_levels`) on an **isotropic grid aligned with the LPS
axes**: ``CropSpec.size`` voxels of ``CropSpec.spacing_mm`` along L, P and S
(default 32 voxels of 1.5 mm = a 48 mm cube, which holds a lumbar body's
trabecular core with its endplates and cortex; Peng et al. 2024 and Li et al.
2024 use crops of the segmented body in the same way). It is resampled from the
canonical CT with SimpleITK (linear for HU, nearest neighbour for the mask);
outside the scan reads -1024 HU.

Channels of a crop, shape ``(3, size, size, size)``, axes (channel, L, P, S):

0. **HU**, window ``HU_WINDOW`` = [-250, 1250] HU mapped linearly to [-1, 1]
   and clipped (soft tissue to dense cortex; air and metal saturate);
1. **calibrated density**: the scan's phantomless calibration applied voxel by
   voxel (K2HPO4 mg/cm³, :class:`ctbmd.types.Calibration`), divided by
   ``MG_CM3_SCALE`` (200) and clipped to [-1, 6]. It makes crops of different
   kVp and scanners comparable, which the HU channel alone is not;
2. **trabecular ROI mask** of that level (0/1).

Features, one vector per vertebra (:data:`FEATURES`, in this order): the
calibrated ROI BMD (the calibration-only prediction, mg/cm³), the ROI median
and SD (HU), the calibration slope (mg/cm³ per HU) and effective energy (keV),
the subcutaneous-fat and muscle HU, the aortic HU and whether it was found,
whether the scan is contrast-enhanced, and the slice spacing (mm). They are the
scan context a hospital's own CT protocol varies, and they let the network learn
what the calibration misses (iodine in the marrow, for one).

Muscle crop (``ctbmd train --muscle``; Huang et al. 2025, seed 004, read the
vertebral body **and the skeletal muscle** of unenhanced chest CT): one wider
**axial** slab per level, ``MUSCLE_SIZE`` x ``MUSCLE_SIZE`` pixels of
``MUSCLE_SPACING_MM`` (64 x 2.5 mm = 160 mm) along L and P, centred on the
trabecular ROI in L and ``MUSCLE_POSTERIOR_MM`` (25 mm) behind it in P, so it
spans 80 mm to each side and 55 mm in front to 105 mm behind the body's centre:
the psoas beside the lumbar bodies and the paraspinal (erector spinae,
multifidus) muscles behind the arch, at the vertebra's own level. The HU are the
mean of ``MUSCLE_SLAB_MM`` (10 mm) along S (5 planes 2.5 mm apart), which lowers
the noise as a thick axial reformat does. Shape ``(2, 64, 64)``, axes
(channel, L, P):

0. **HU**, soft-tissue window ``MUSCLE_HU_WINDOW`` = [-200, 300] HU mapped to
   [-1, 1] (fatty infiltration moves muscle by tens of HU, which the bone
   window of the body crop would compress);
1. **skeletal muscle mask**: -29 to 150 HU, the standard CT skeletal-muscle
   range (Mitsiopoulos et al., J Appl Physiol 1998;85:115-122,
   doi:10.1152/jappl.1998.85.1.115; Aubrey et al., Acta Physiol 2014;210:489,
   doi:10.1111/apha.12224), restricted to the paraspinal/psoas compartment:

   * no more than 25 mm in front of the body's centre (the bowel, aorta and
     anterior abdominal wall are left out) and no more than 70 mm to either
     side;
   * not within 7.5 mm of the midline, where the canal, the spinous processes
     and their ligaments part the left and right muscles;
   * inside the patient: the largest connected region above -400 HU after an
     opening of 5 mm (the table lies apart, beyond air, or touches the back
     over a thin shell that the opening cuts), eroded by 5 mm (the skin);
   * outside every labelled vertebra, dilated by 2.5 mm and with its holes
     filled (a low-density body, and the cord and CSF in the canal, would
     otherwise pass as muscle).

   The medial edge of a kidney and the diaphragmatic crura beside the upper
   lumbar bodies can enter it; the HU channel lets the network tell them
   apart.

The muscle crop is cut for every level (it is small: 32 KB) and cached with the
body crop; only a model trained with ``--muscle`` reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ctbmd.errors import InvalidInputError
from ctbmd.io import array_to_image, image_to_array, resample_labels
from ctbmd.types import VERSE_LABELS, Calibration, ContrastPhase, CTVolume, Grid, LevelMeasurement

#: HU window of channel 0: [low, high] maps to [-1, 1].
HU_WINDOW: tuple[float, float] = (-250.0, 1250.0)
#: Divisor of channel 1 (K2HPO4 mg/cm³).
MG_CM3_SCALE = 200.0
#: Names of the per-vertebra feature vector, in order.
FEATURES: tuple[str, ...] = (
    "bmd_calibrated_mg_cm3", "roi_hu_median", "roi_hu_sd", "calibration_slope", "effective_energy_kev",
    "fat_hu", "muscle_hu", "aorta_hu", "aorta_found", "contrast_enhanced", "slice_spacing_mm",
)
#: Bump when crop or feature extraction changes, so cached crops are rebuilt.
CROP_VERSION = 3  # 2: QCT Pro calibration (issue 12) changed channel 1 and the scan features; 3: muscle crop

#: Muscle crop geometry (see the module docstring): pixels per side, pixel size (mm), posterior shift of
#: its centre from the ROI centre (mm), slab thickness averaged along S (mm), planes in the slab.
MUSCLE_SIZE = 64
MUSCLE_SPACING_MM = 2.5
MUSCLE_POSTERIOR_MM = 25.0
MUSCLE_SLAB_MM = 10.0
MUSCLE_PLANES = 5
#: HU window of the muscle crop's channel 0.
MUSCLE_HU_WINDOW: tuple[float, float] = (-200.0, 300.0)
#: Skeletal-muscle HU range (Mitsiopoulos 1998, doi:10.1152/jappl.1998.85.1.115).
MUSCLE_HU_RANGE: tuple[float, float] = (-29.0, 150.0)
#: How far in front of the body's centre the muscle compartment reaches (mm).
MUSCLE_ANTERIOR_LIMIT_MM = 25.0
#: How far to each side of the body's centre it reaches (mm): the lateral edges of psoas and erector spinae.
MUSCLE_LATERAL_LIMIT_MM = 70.0
#: Half-width of the midline strip left out (mm): body, canal and spinous processes, no muscle crosses it.
MUSCLE_MIDLINE_MM = 7.5
#: Pixels eroded from the body outline before masking (2 x 2.5 mm: skin and its partial volume).
MUSCLE_SKIN_PIXELS = 2


@dataclass(frozen=True)
class CropSpec:
    """Geometry of a vertebral-body crop.

    Attributes
    ----------
    size : int
        Voxels along each axis (L, P, S).
    spacing_mm : float
        Isotropic voxel size (mm).
    """

    size: int = 32
    spacing_mm: float = 1.5

    def key(self) -> str:
        """Short text that identifies this spec and the extraction code version."""
        return f"v{CROP_VERSION}-s{self.size}-sp{self.spacing_mm:g}"


@dataclass(frozen=True)
class VertebraCrop:
    """One vertebral body ready for the network.

    Attributes
    ----------
    level : str
        Level name, e.g. ``"L1"``.
    image : numpy.ndarray
        float32, shape ``(3, size, size, size)``, axes (channel, L, P, S); see the
        module docstring for the channels.
    features : numpy.ndarray
        float32, shape ``(len(FEATURES),)``, raw units as named in :data:`FEATURES`.
    usable : bool
        False when the ROI stage flagged the level (``partial``, ``too_small``,
        ``metal``, ``suspected_fracture``); such crops are not trained on.
    muscle : numpy.ndarray or None
        float32, shape ``(2, MUSCLE_SIZE, MUSCLE_SIZE)``, axes (channel, L, P):
        the muscle crop (module docstring); None for crops made without it.
    """

    level: str
    image: np.ndarray
    features: np.ndarray
    usable: bool
    muscle: np.ndarray | None = None

    @property
    def bmd_calibrated_mg_cm3(self) -> float:
        """The calibration-only BMD of this level (K2HPO4 mg/cm³), ``features[0]``."""
        return float(self.features[0])


@dataclass(frozen=True)
class ScanCrops:
    """The crops of one scan (:func:`extract_crops`, :func:`load_crops`).

    Attributes
    ----------
    crops : list of VertebraCrop
        Cranial to caudal, for the levels that have a ROI.
    skipped : dict of str to str
        Level -> why no crop was cut (empty ROI, or no calibration).
    """

    crops: list[VertebraCrop]
    skipped: dict[str, str]


def _crop_grid(centre_lps: np.ndarray, spec: CropSpec) -> Grid:
    """The LPS-aligned grid of the crop centred on ``centre_lps`` (``spec.size`` voxels of ``spec.spacing_mm``)."""
    origin = centre_lps - (spec.size - 1) / 2.0 * spec.spacing_mm
    return Grid((spec.size,) * 3, (spec.spacing_mm,) * 3, tuple(origin.tolist()), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _resample(image: sitk.Image, centre_lps: np.ndarray, spec: CropSpec, interpolator, default: float) -> np.ndarray:
    grid = _crop_grid(centre_lps, spec)
    out = sitk.Resample(image, list(grid.size), sitk.Transform(), interpolator, list(grid.origin_lps_mm),
                        list(grid.spacing_mm), list(grid.direction), default)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def muscle_crop_record() -> dict:
    """The muscle crop's settings as stored in a ``--muscle`` model's ``config.json`` (and checked on load)."""
    return {"size": MUSCLE_SIZE, "spacing_mm": MUSCLE_SPACING_MM, "posterior_mm": MUSCLE_POSTERIOR_MM,
            "slab_mm": MUSCLE_SLAB_MM, "planes": MUSCLE_PLANES, "hu_window": list(MUSCLE_HU_WINDOW),
            "muscle_hu_range": list(MUSCLE_HU_RANGE), "anterior_limit_mm": MUSCLE_ANTERIOR_LIMIT_MM,
            "lateral_limit_mm": MUSCLE_LATERAL_LIMIT_MM, "midline_mm": MUSCLE_MIDLINE_MM,
            "skin_pixels": MUSCLE_SKIN_PIXELS,
            "frame": "axial slab (L, P), LPS-aligned, at the trabecular ROI's level"}


def _muscle_crop(hu_img: sitk.Image, bone_img: sitk.Image | None, centre_lps: np.ndarray) -> np.ndarray:
    """The ``(2, MUSCLE_SIZE, MUSCLE_SIZE)`` muscle crop around a level (module docstring)."""
    n, sp = MUSCLE_SIZE, MUSCLE_SPACING_MM
    step = MUSCLE_SLAB_MM / (MUSCLE_PLANES - 1)
    centre = centre_lps + np.array([0.0, MUSCLE_POSTERIOR_MM, 0.0])
    origin = centre - np.array([(n - 1) / 2.0 * sp, (n - 1) / 2.0 * sp, (MUSCLE_PLANES - 1) / 2.0 * step])
    size, spacing = [n, n, MUSCLE_PLANES], [sp, sp, step]
    direction = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    slab = sitk.GetArrayFromImage(sitk.Resample(hu_img, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                                                spacing, direction, -1024.0)).transpose(2, 1, 0)
    hu = slab.mean(axis=2)
    lo, hi = MUSCLE_HU_WINDOW
    ch0 = np.clip((hu - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
    axis_mm = (np.arange(n) - (n - 1) / 2.0) * sp
    l_mm, p_mm = axis_mm[:, None], axis_mm[None, :] + MUSCLE_POSTERIOR_MM  # relative to the body's centre (mm)
    # the patient is the largest part; the table lies apart, beyond air, or touches the back over a thin
    # shell that an opening of 2 pixels (5 mm) cuts
    parts, count = ndi.label(ndi.binary_opening(hu > -400.0, iterations=MUSCLE_SKIN_PIXELS))
    body = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1) if count else np.zeros_like(hu, bool)
    body = ndi.binary_erosion(ndi.binary_fill_holes(body), iterations=MUSCLE_SKIN_PIXELS)  # skin left out
    mask = ((hu >= MUSCLE_HU_RANGE[0]) & (hu <= MUSCLE_HU_RANGE[1]) & body
            & (p_mm >= -MUSCLE_ANTERIOR_LIMIT_MM) & (np.abs(l_mm) <= MUSCLE_LATERAL_LIMIT_MM)
            & (np.abs(l_mm) >= MUSCLE_MIDLINE_MM))
    if bone_img is not None:
        bone = image_to_array(resample_labels(bone_img, Grid(tuple(size), tuple(spacing), tuple(origin.tolist()),
                                                             tuple(direction))))
        # the vertebra with its ring closed: the canal (cord and CSF read like muscle) is not muscle
        mask &= ~ndi.binary_fill_holes(ndi.binary_dilation(bone.any(axis=2), iterations=1))
    return np.stack([ch0, mask]).astype(np.float32)


def scan_features(calibration: Calibration, phase: ContrastPhase, ct: CTVolume) -> dict[str, float]:
    """The scan-level entries of :data:`FEATURES` (NaN where a tissue was not measured).

    Raises
    ------
    InvalidInputError
        If ``calibration.ok`` is False (the model builds on the calibrated scale).
    """
    if not calibration.ok:
        raise InvalidInputError(f"no calibration: {calibration.reason}")
    t = calibration.tissues

    def hu(name):
        return t[name].hu_median if name in t else float("nan")

    return {"calibration_slope": float(calibration.slope), "effective_energy_kev": float("nan") if calibration.effective_energy_kev is None
            else float(calibration.effective_energy_kev),
            "fat_hu": hu("subcutaneous_fat"), "muscle_hu": hu("paraspinal_muscle"),
            "aorta_hu": float(phase.aorta_hu) if phase.aorta_hu is not None else float("nan"),
            "aorta_found": float(phase.aorta_hu is not None), "contrast_enhanced": float(phase.enhanced),
            "slice_spacing_mm": float(ct.spacing_mm[2])}


def extract_crops(ct: CTVolume, roi_labels: np.ndarray, levels: list[LevelMeasurement], calibration: Calibration,
                  phase: ContrastPhase, spec: CropSpec = CropSpec(),
                  vertebra_labels: np.ndarray | None = None) -> ScanCrops:
    """Cut one crop per measured level.

    Parameters
    ----------
    ct : CTVolume
        The scan (canonical LPS grid, HU).
    roi_labels : numpy.ndarray
        uint8 ``(nx, ny, nz)`` trabecular ROIs in VerSe numbering, from
        :func:`ctbmd.roi.measure_levels`.
    levels : list of LevelMeasurement
        The ROI statistics of the same run.
    calibration, phase :
        The scan's calibration and contrast phase.
    spec : CropSpec
        Crop geometry.
    vertebra_labels : numpy.ndarray, optional
        ``(nx, ny, nz)`` whole-vertebra labels (``SpineSegmentation.labels``):
        bone is left out of the muscle crop's mask. Without them the mask is
        the HU range and compartment alone.

    Returns
    -------
    ScanCrops
        The crops, cranial to caudal, for the levels that have a ROI, each with
        its muscle crop; and for the other levels why no crop was cut (empty
        ROI, or no calibration).
    """
    skipped: dict[str, str] = {}
    try:
        scan = scan_features(calibration, phase, ct)
    except InvalidInputError as exc:
        return ScanCrops(crops=[], skipped={m.level: exc.reason for m in levels})
    hu_img = array_to_image(ct.hu.astype(np.float32, copy=False), ct.grid)
    roi_img = array_to_image(roi_labels, ct.grid)
    bone_img = None if vertebra_labels is None else array_to_image((vertebra_labels > 0).astype(np.uint8), ct.grid)
    lo, hi = HU_WINDOW
    crops = []
    for m in levels:
        v = VERSE_LABELS[m.level]
        idx = np.argwhere(roi_labels == v)
        if m.hu_median is None or not len(idx):
            skipped[m.level] = "no trabecular ROI"
            continue
        centre = ct.index_to_lps(idx.mean(0))
        hu = _resample(hu_img, centre, spec, sitk.sitkLinear, -1024.0)
        mask = (image_to_array(resample_labels(roi_img, _crop_grid(centre, spec))) == v).astype(np.float32)
        ch0 = np.clip((hu - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
        ch1 = np.clip((calibration.slope * hu + calibration.intercept) / MG_CM3_SCALE, -1.0, 6.0)
        bmd = float(calibration.to_mg_cm3(m.hu_median))
        feats = {"bmd_calibrated_mg_cm3": bmd, "roi_hu_median": float(m.hu_median),
                 "roi_hu_sd": float(m.hu_sd or 0.0), **scan}
        crops.append(VertebraCrop(level=m.level, image=np.stack([ch0, ch1, mask]).astype(np.float32),
                                  features=np.array([feats[f] for f in FEATURES], np.float32),
                                  usable=m.usable, muscle=_muscle_crop(hu_img, bone_img, centre)))
    return ScanCrops(crops=crops, skipped=skipped)


def input_hash(paths: list[str | Path], spec: CropSpec, extra: str = "") -> str:
    """SHA-256 (hex, 24 characters) of the input files' bytes, the crop spec and ``extra``.

    A DICOM folder is hashed file by file in sorted order. This is the key of
    the on-disk crop cache: a changed file, spec or segmentation choice gives
    a new key.

    Raises
    ------
    InvalidInputError
        If a path does not exist.
    """
    h = hashlib.sha256(f"{spec.key()}|{extra}".encode())
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InvalidInputError("does not exist", p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:24]


def save_crops(path: Path, crops: list[VertebraCrop], skipped: dict[str, str], spec: CropSpec) -> None:
    """Write crops to one ``.npz`` (written to a temporary name, then renamed)."""
    from ctbmd.io import write_atomic

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, levels=np.array([c.level for c in crops], dtype="U4"),
                images=np.stack([c.image for c in crops]) if crops else np.zeros((0, 3, spec.size, spec.size, spec.size), np.float32),
                features=np.stack([c.features for c in crops]) if crops else np.zeros((0, len(FEATURES)), np.float32),
                usable=np.array([c.usable for c in crops], bool),
                muscle=np.stack([c.muscle for c in crops]) if crops and all(c.muscle is not None for c in crops)
                else np.zeros((0, 2, MUSCLE_SIZE, MUSCLE_SIZE), np.float32),
                skipped=np.array([f"{k}:{v}" for k, v in skipped.items()], dtype="U200"),
                spec=np.array(str(asdict(spec))))

    write_atomic(path, writer)


def load_crops(path: Path) -> ScanCrops:
    """Read crops written by :func:`save_crops`."""
    with np.load(path) as z:
        muscle = z["muscle"] if "muscle" in z.files and len(z["muscle"]) == len(z["levels"]) else None
        crops = [VertebraCrop(level=str(lv), image=z["images"][i], features=z["features"][i],
                              usable=bool(z["usable"][i]), muscle=None if muscle is None else muscle[i])
                 for i, lv in enumerate(z["levels"])]
        skipped = dict(s.split(":", 1) for s in z["skipped"])
    return ScanCrops(crops=crops, skipped=skipped)
