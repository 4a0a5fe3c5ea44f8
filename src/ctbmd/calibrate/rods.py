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
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import stats
from scipy.signal import fftconvolve

from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.materials import QCT_PRO_BETA_SHIFT, QCT_PRO_SIGMA_SHIFT, qct_pro_from_reference, qct_pro_line
from ctbmd.types import Calibration, CTVolume, ScanInfo

#: Default rod diameter (mm).
DEFAULT_DIAMETER_MM = 20.0
#: Smallest r^2 of the HU-on-K2HPO4 line accepted.
MIN_R2 = 0.99
#: Fraction of a rod's radius sampled (keeps the partial-volume edge out).
SAMPLE_RADIUS_FRACTION = 0.6
#: Plausible range of sigma_CT (HU per mg/cm^3): qct_pro_line gives 3.26 at 40 keV and 0.84 at 120 keV.
SIGMA_RANGE = (0.4, 5.0)
#: Largest |beta_CT| (HU) accepted from a rod fit.
MAX_ABS_BETA_HU = 150.0
#: Smallest rod-to-surround contrast (HU) for a rod to count as seen in the slice-averaged image.
MIN_CONTRAST_HU = 8.0
#: Fraction of the scan's slices (centred) averaged when no z range is given.
DEFAULT_Z_FRACTION = 0.6
#: Energies (keV) searched for the monoenergetic equivalent of a fitted sigma_CT.
ENERGY_SEARCH_KEV = (40.0, 120.0)
#: Schema tag of a saved scanner profile.
PROFILE_SCHEMA = "ctbmd-scanner-profile 1"
#: Largest kVp difference (kV) between a scan and its profile.
MAX_KVP_DIFFERENCE = 1.0
#: Body threshold (HU) for the water-equivalent diameter and the patient outline.
BODY_HU = -400.0
#: The largest object in the image is taken for a patient when at least this deep (mm, front to back);
#: rods must then lie behind its centroid. A smaller one is a phantom scanned alone.
MIN_PATIENT_DEPTH_MM = 120.0


# --------------------------------------------------------------------------- description of the phantom


@dataclass(frozen=True)
class Rod:
    """One calibration rod.

    Attributes
    ----------
    k2hpo4_mg_cm3 : float
        K2HPO4 concentration, mg/cm^3 (from the phantom's certificate).
    water_mg_cm3 : float or None
        Water density of the rod's solution, mg/cm^3, from the certificate
        (Mindways form ``HU - W = sigma_ref K + beta_ref``). None: the rod is a
        QCT-Pro-equivalent solution, water ``999.6 - 0.2174 K`` mg/cm^3, and
        ``HU = sigma_CT K + beta_CT`` is fitted directly.
    """

    k2hpo4_mg_cm3: float
    water_mg_cm3: float | None = None

    @property
    def water_used_mg_cm3(self) -> float:
        """The water density used in the fit, mg/cm^3 (the QCT Pro equivalent when none is given)."""
        if self.water_mg_cm3 is not None:
            return float(self.water_mg_cm3)
        return QCT_PRO_BETA_SHIFT - QCT_PRO_SIGMA_SHIFT * float(self.k2hpo4_mg_cm3)


@dataclass(frozen=True)
class RodSpec:
    """A rod phantom.

    Attributes
    ----------
    rods : tuple of Rod
        The rods in order of increasing LPS x (left to right on a radiological
        display). At least 3, with distinct K2HPO4.
    diameter_mm : float
        Rod diameter, mm.
    centres_lps_mm : tuple of (float, float) or None
        Rod centres ``(x, y)`` in LPS mm, one per rod in the same order: the
        rods are then measured there instead of being searched for.
    """

    rods: tuple[Rod, ...]
    diameter_mm: float = DEFAULT_DIAMETER_MM
    centres_lps_mm: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self):
        _validate_spec(self)

    def to_text(self) -> str:
        """The ``K`` or ``K:W`` list form accepted by :func:`parse_rod_spec` (without diameter or centres)."""
        return ",".join(f"{r.k2hpo4_mg_cm3:g}" if r.water_mg_cm3 is None
                        else f"{r.k2hpo4_mg_cm3:g}:{r.water_mg_cm3:g}" for r in self.rods)


def _validate_spec(spec: RodSpec) -> None:
    rods = spec.rods
    if len(rods) < 3:
        raise UsageError(f"rod phantom needs at least 3 rods, got {len(rods)}")
    ks = [float(r.k2hpo4_mg_cm3) for r in rods]
    if not all(math.isfinite(k) and -100.0 <= k <= 2000.0 for k in ks):
        raise UsageError("rod K2HPO4 values must be -100 to 2000 mg/cm3")
    if len(set(ks)) != len(ks):
        raise UsageError("rod K2HPO4 values must be distinct")
    for r in rods:
        w = r.water_mg_cm3
        if w is not None and not (math.isfinite(float(w)) and 500.0 <= float(w) <= 1500.0):
            raise UsageError(f"rod water density {w:g} mg/cm3 is outside 500-1500 mg/cm3")
    if not (math.isfinite(float(spec.diameter_mm)) and 3.0 <= float(spec.diameter_mm) <= 100.0):
        raise UsageError(f"rod diameter must be 3-100 mm, not {spec.diameter_mm:g}")
    if spec.centres_lps_mm is not None:
        if len(spec.centres_lps_mm) != len(rods):
            raise UsageError(f"rod phantom gives {len(spec.centres_lps_mm)} centres for {len(rods)} rods")
        if any(len(c) != 2 or not all(math.isfinite(float(v)) for v in c) for c in spec.centres_lps_mm):
            raise UsageError("each rod centre must be two finite numbers (x, y LPS mm)")


#: A Mindways-like five-rod phantom given as QCT-Pro-equivalent solutions (K2HPO4 mg/cm^3).
DEFAULT_ROD_SPEC = RodSpec(rods=tuple(Rod(float(k)) for k in (0, 50, 100, 150, 200)))


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def parse_rod_spec(text: str) -> RodSpec:
    """Parse a rod phantom description.

    Accepted forms:

    * ``"0,50,100,150,200"``: K2HPO4 mg/cm^3 of each rod, QCT-Pro-equivalent
      solutions (water ``999.6 - 0.2174 K``);
    * ``"-0.06:1012.2,58.9:1057.0,..."``: ``K:W`` pairs, K2HPO4 and water mg/cm^3
      from the phantom's certificate (Mindways form);
    * the path of a JSON file ``{"rods": [{"k2hpo4_mg_cm3": .., "water_mg_cm3": ..}, ..],
      "diameter_mm": .., "centres_lps_mm": [[x, y], ..]}`` (``water_mg_cm3``,
      ``diameter_mm`` and ``centres_lps_mm`` optional; centres in LPS mm).

    Rods are listed in order of increasing LPS x (left to right on a
    radiological display).

    Parameters
    ----------
    text : str
        The description, or a path to the JSON file.

    Returns
    -------
    RodSpec

    Raises
    ------
    UsageError
        (exit 2) Malformed text or file, fewer than 3 rods, repeated K2HPO4
        values, values out of range; the message is one line naming the problem.
    """
    raw = str(text).strip()
    if not raw:
        raise UsageError("rod phantom description is empty (give e.g. 0,50,100,150,200)")
    looks_like_file = raw.lower().endswith(".json") or "/" in raw or "\\" in raw
    if looks_like_file or Path(raw).is_file():
        return _parse_rod_file(Path(raw))
    rods = []
    for item in (s.strip() for s in raw.split(",")):
        if not item:
            raise UsageError(f"rod phantom description {raw!r} has an empty item")
        m = re.fullmatch(rf"({_NUMBER})(?:\s*:\s*({_NUMBER}))?", item)
        if not m:
            raise UsageError(f"rod item {item!r} is not K or K:W (K2HPO4 and water mg/cm3, e.g. 50 or 58.9:1057)")
        rods.append(Rod(float(m.group(1)), None if m.group(2) is None else float(m.group(2))))
    return RodSpec(rods=tuple(rods))


def _parse_rod_file(path: Path) -> RodSpec:
    if not path.is_file():
        raise UsageError(f"rod phantom file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"rod phantom file {path} is not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rods"), list):
        raise UsageError(f"rod phantom file {path} has no \"rods\" list")
    rods = []
    for i, r in enumerate(data["rods"]):
        if isinstance(r, (int, float)) and not isinstance(r, bool):
            r = {"k2hpo4_mg_cm3": r}
        if not isinstance(r, dict) or "k2hpo4_mg_cm3" not in r:
            raise UsageError(f"rod phantom file {path}: rod {i + 1} has no k2hpo4_mg_cm3")
        try:
            k = float(r["k2hpo4_mg_cm3"])
            w = None if r.get("water_mg_cm3") is None else float(r["water_mg_cm3"])
        except (TypeError, ValueError):
            raise UsageError(f"rod phantom file {path}: rod {i + 1} has a non-numeric value") from None
        rods.append(Rod(k, w))
    try:
        diameter = float(data.get("diameter_mm", DEFAULT_DIAMETER_MM))
        centres = data.get("centres_lps_mm")
        if centres is not None:
            centres = tuple((float(c[0]), float(c[1])) if len(c) == 2 else (math.nan,) for c in centres)
    except (TypeError, ValueError, IndexError, KeyError):
        raise UsageError(f"rod phantom file {path}: diameter_mm or centres_lps_mm is malformed") from None
    try:
        return RodSpec(rods=tuple(rods), diameter_mm=diameter, centres_lps_mm=centres)
    except UsageError as exc:
        raise UsageError(f"rod phantom file {path}: {exc.reason}") from None


# --------------------------------------------------------------------------- finding and measuring the rods


@dataclass(frozen=True)
class RodReading:
    """One rod as measured in the scan.

    Attributes
    ----------
    rod : Rod
        The rod of the spec it was matched to.
    centre_lps_mm : tuple of float
        Rod centre ``(x, y)``, LPS mm.
    hu_mean, hu_sd : float
        Mean and SD (HU) of the voxels sampled: a disc of
        :data:`SAMPLE_RADIUS_FRACTION` of the rod's radius on every slice of the z range.
    n_voxels : int
        Voxels sampled.
    visible : bool
        Whether the rod stood out from its surroundings (False: it has the
        block's HU, e.g. K = 0 in a water-equivalent block, and was placed by the
        row's spacing and order, or its centre was given).
    """

    rod: Rod
    centre_lps_mm: tuple[float, float]
    hu_mean: float
    hu_sd: float
    n_voxels: int
    visible: bool


@dataclass(frozen=True)
class RodMeasurement:
    """The rods of a scan, measured.

    Attributes
    ----------
    readings : tuple of RodReading
        One per rod of the spec, in the spec's order.
    z_range_mm : tuple of float
        LPS z (mm) of the first and last slice averaged.
    n_slices : int
        Slices averaged.
    located : str
        ``"detected"`` (found in the image) or ``"given"`` (the spec's centres).
    reversed : bool
        True when the row was read in decreasing LPS x (the phantom lay turned
        round relative to the spec's order).
    surround_hu : float or None
        Median HU around the rods (the block holding them).
    path : str or None
        The scan's path.
    """

    readings: tuple[RodReading, ...]
    z_range_mm: tuple[float, float]
    n_slices: int
    located: str
    reversed: bool = False
    surround_hu: float | None = None
    path: str | None = None


def _not_found(ct: CTVolume, why: str) -> InvalidInputError:
    return InvalidInputError(f"calibration rods not found: {why}", ct.info.path or None)


def _slice_range(ct: CTVolume, z_range_mm: tuple[float, float] | None) -> tuple[int, int, np.ndarray]:
    nz = ct.hu.shape[2]
    ks = np.arange(nz)
    zs = ct.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), ks], axis=1))[:, 2]
    if z_range_mm is None:
        n = max(1, int(round(nz * DEFAULT_Z_FRACTION)))
        k0 = (nz - n) // 2
        return k0, k0 + n, zs
    lo, hi = sorted(float(v) for v in z_range_mm)
    sel = np.nonzero((zs >= lo - 1e-6) & (zs <= hi + 1e-6))[0]
    if len(sel) == 0:
        raise UsageError(f"rod z range {lo:g} to {hi:g} mm holds no slice of the scan "
                         f"(it covers {zs.min():.1f} to {zs.max():.1f} mm)")
    return int(sel[0]), int(sel[-1]) + 1, zs


def _disc_kernel(r_lo_mm: float, r_hi_mm: float, sx: float, sy: float) -> np.ndarray:
    hx, hy = int(np.ceil(r_hi_mm / sx)), int(np.ceil(r_hi_mm / sy))
    X, Y = np.meshgrid(np.arange(-hx, hx + 1) * sx, np.arange(-hy, hy + 1) * sy, indexing="ij")
    r = np.hypot(X, Y)
    k = ((r >= r_lo_mm) & (r <= r_hi_mm)).astype(float)
    return k / k.sum()


@dataclass
class _Blob:
    ij: np.ndarray           # refined centre, pixel units (i, j)
    contrast: float          # inner mean - surround median, HU
    inner: float             # inner mean, HU
    inner_sd: float
    surround: float          # surround median, HU
    disc: bool               # passed the disc-shape tests


def _ring_stats(mean: np.ndarray, ij: np.ndarray, radius_mm: float, sx: float, sy: float):
    """Gather ring statistics of the slice-averaged image around a sub-pixel centre."""
    R = radius_mm
    hx, hy = int(np.ceil(1.8 * R / sx)) + 1, int(np.ceil(1.8 * R / sy)) + 1
    ci, cj = int(round(ij[0])), int(round(ij[1]))
    i0, i1 = max(0, ci - hx), min(mean.shape[0], ci + hx + 1)
    j0, j1 = max(0, cj - hy), min(mean.shape[1], cj + hy + 1)
    sub = mean[i0:i1, j0:j1]
    dx = (np.arange(i0, i1)[:, None] - ij[0]) * sx
    dy = (np.arange(j0, j1)[None, :] - ij[1]) * sy
    r = np.hypot(dx, dy) / R
    ang = np.arctan2(np.broadcast_to(dy, r.shape), np.broadcast_to(dx, r.shape))
    quad = (((ang + np.pi / 4) // (np.pi / 2)) % 4).astype(int)
    return sub, r, quad, (i0, j0), dx, dy


def _examine(mean: np.ndarray, ij0: np.ndarray, radius_mm: float, sx: float, sy: float,
             noise_mean: float, refine: bool = True) -> _Blob:
    """Refine a candidate's centre (contrast-weighted centroid) and test whether it is a uniform disc.

    The disc tests, on the slice-averaged image around the centre: contrast of
    the inner disc (0.6 R) to the surround (median of 1.35-1.75 R) at least
    :data:`MIN_CONTRAST_HU`; in each quadrant, the 0.7-0.9 R ring holds at
    least 70% of that contrast and the 1.15-1.3 R ring at most 35% (an edge at
    the rod's radius all round); the inner disc is uniform.
    """
    ij = np.asarray(ij0, float)
    for _ in range(3 if refine else 0):
        sub, r, quad, (i0, j0), dx, dy = _ring_stats(mean, ij, radius_mm, sx, sy)
        ring = (r >= 1.35) & (r <= 1.75)
        inner = r <= SAMPLE_RADIUS_FRACTION
        if not ring.any() or not inner.any():
            break
        surround = float(np.median(sub[ring]))
        sign = 1.0 if float(sub[inner].mean()) >= surround else -1.0
        w = np.clip(sign * (sub - surround), 0.0, None) * (r <= 1.3)
        if w.sum() <= 0:
            break
        shift = np.array([(w * dx).sum() / w.sum() / sx, (w * dy).sum() / w.sum() / sy])
        ij = ij + shift
        if np.abs(shift).max() < 0.05:
            break
    sub, r, quad, _, _, _ = _ring_stats(mean, ij, radius_mm, sx, sy)
    inner_m = r <= SAMPLE_RADIUS_FRACTION
    ring = (r >= 1.35) & (r <= 1.75)
    if not inner_m.any() or ring.sum() < 8:
        return _Blob(ij, 0.0, float("nan"), float("nan"), float("nan"), False)
    inner = float(sub[inner_m].mean())
    inner_sd = float(sub[inner_m].std())
    surround = float(np.median(sub[ring]))
    c = inner - surround
    ok = abs(c) >= MIN_CONTRAST_HU
    if ok:
        for q in range(4):
            e_in = sub[(r >= 0.7) & (r <= 0.9) & (quad == q)]
            e_out = sub[(r >= 1.15) & (r <= 1.3) & (quad == q)]
            if not len(e_in) or not len(e_out):
                ok = False
                break
            if (e_in.mean() - surround) / c < 0.7 or (e_out.mean() - surround) / c > 0.35:
                ok = False
                break
    if ok:
        ok = inner_sd <= 0.25 * abs(c) + 4.0 * noise_mean + 3.0
    return _Blob(ij, c, inner, inner_sd, surround, bool(ok))


def _noise_of_mean(hu: np.ndarray, k0: int, k1: int) -> float:
    """SD (HU) of the slice-averaged image's noise, from the difference of two neighbouring slices."""
    if k1 - k0 < 2:
        a = hu[:, :, k0].astype(float)
        d = a - ndi.uniform_filter(a, 3)
        keep = a > -900
        if not keep.any():
            return 10.0
        # white noise minus its 3x3 mean keeps sqrt(8/9) of its SD
        return 1.4826 * float(np.median(np.abs(d[keep] - np.median(d[keep])))) / math.sqrt(8.0 / 9.0)
    mid = (k0 + k1) // 2
    a, b = hu[:, :, mid - 1].astype(float), hu[:, :, mid].astype(float)
    keep = (a > -900) & (b > -900)
    if keep.sum() < 100:
        return 10.0 / math.sqrt(k1 - k0)
    d = (a - b)[keep]
    sd_slice = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    return sd_slice / math.sqrt(k1 - k0)


def _candidates(mean: np.ndarray, radius_mm: float, sx: float, sy: float, noise_mean: float,
                j_min: float | None = None, max_candidates: int = 60) -> list[_Blob]:
    """Disc-shaped blobs of the rod's size in the slice-averaged image (either sign of contrast).

    A matched filter (mean of the inner disc minus mean of a surrounding
    annulus) gives the peaks; those whose inner disc is uniform and that lie
    behind pixel row ``j_min`` are refined and tested by :func:`_examine`.
    """
    inner_k = _disc_kernel(0.0, SAMPLE_RADIUS_FRACTION * radius_mm, sx, sy)
    ring_k = _disc_kernel(1.3 * radius_mm, 1.7 * radius_mm, sx, sy)
    inner = fftconvolve(mean, inner_k, mode="same")
    inner_sd = np.sqrt(np.clip(fftconvolve(mean ** 2, inner_k, mode="same") - inner ** 2, 0.0, None))
    c_map = inner - fftconvolve(mean, ring_k, mode="same")
    mi, mj = int(np.ceil(1.8 * radius_mm / sx)), int(np.ceil(1.8 * radius_mm / sy))
    valid = np.zeros(mean.shape, bool)
    valid[mi:mean.shape[0] - mi, mj:mean.shape[1] - mj] = True
    if j_min is not None:
        valid[:, : int(np.ceil(j_min)) + 1] = False
    a = np.abs(c_map)
    size = (2 * max(1, int(0.4 * radius_mm / sx)) + 1, 2 * max(1, int(0.4 * radius_mm / sy)) + 1)
    peaks = ((a == ndi.maximum_filter(a, size=size)) & valid & (a >= MIN_CONTRAST_HU)
             & (inner_sd <= 0.3 * a + 5.0 * noise_mean + 5.0))
    idx = np.argwhere(peaks)
    order = np.argsort(-a[peaks], kind="stable")[:2000]
    blobs: list[_Blob] = []
    for p in idx[order]:
        b = _examine(mean, p.astype(float), radius_mm, sx, sy, noise_mean)
        if not b.disc:
            continue
        d_mm = [np.hypot((b.ij[0] - o.ij[0]) * sx, (b.ij[1] - o.ij[1]) * sy) for o in blobs]
        if d_mm and min(d_mm) < radius_mm:
            continue
        blobs.append(b)
        if len(blobs) >= max_candidates:
            break
    return blobs


def _row_hypotheses(blobs: list[_Blob], n: int, diameter_mm: float, sx: float, sy: float):
    """Equally spaced rows of ``n`` slots through pairs of blobs; each slot matched to a blob or empty.

    Yields ``(n_matched, rms_mm, slots_xy_mm, matched)`` with ``matched[k]`` a blob index or -1.
    """
    if len(blobs) < 2:
        return []
    xy = np.array([[b.ij[0] * sx, b.ij[1] * sy] for b in blobs])
    tol = max(0.2 * diameter_mm, 1.5 * max(sx, sy))
    out = []
    seen = set()
    for a in range(len(blobs)):
        for b in range(len(blobs)):
            dx, dy = xy[b] - xy[a]
            if dx <= 0 or abs(dy) > math.tan(math.radians(10.0)) * dx + 3.0:
                continue
            for m in range(1, n):
                step = (xy[b] - xy[a]) / m
                if np.hypot(*step) < 0.95 * diameter_mm or np.hypot(*step) > 6.0 * diameter_mm:
                    continue
                for t in range(0, n - m):
                    slots = xy[a] + (np.arange(n) - t)[:, None] * step
                    d = np.hypot(slots[:, None, 0] - xy[None, :, 0], slots[:, None, 1] - xy[None, :, 1])
                    near = d.argmin(axis=1)
                    hit = d[np.arange(n), near] <= tol
                    matched = np.where(hit, near, -1)
                    if len(set(matched[hit].tolist())) != int(hit.sum()):
                        continue
                    key = tuple(matched.tolist())
                    if key in seen:
                        continue
                    seen.add(key)
                    # refit the row through the matched blobs (least squares in slot number)
                    ks = np.nonzero(hit)[0]
                    if len(ks) >= 2:
                        A = np.stack([np.ones(len(ks)), ks], axis=1)
                        coef, *_ = np.linalg.lstsq(A, xy[matched[hit]], rcond=None)
                        slots = coef[0] + np.arange(n)[:, None] * coef[1]
                    rms = float(np.sqrt(np.mean(np.sum((slots[hit] - xy[matched[hit]]) ** 2, axis=1))))
                    out.append((int(hit.sum()), rms, slots, matched))
    out.sort(key=lambda h: (-h[0], h[1]))
    return out


def _sample_rods(ct: CTVolume, centres_ij: np.ndarray, radius_mm: float, k0: int, k1: int):
    """Mean, SD and count of the voxels within SAMPLE_RADIUS_FRACTION of each rod's radius, slices k0..k1-1."""
    sx, sy = ct.spacing_mm[0], ct.spacing_mm[1]
    rs = SAMPLE_RADIUS_FRACTION * radius_mm
    out = []
    nx, ny = ct.hu.shape[:2]
    for ci, cj in centres_ij:
        hx, hy = int(np.ceil(rs / sx)) + 1, int(np.ceil(rs / sy)) + 1
        i0, i1 = max(0, int(round(ci)) - hx), min(nx, int(round(ci)) + hx + 1)
        j0, j1 = max(0, int(round(cj)) - hy), min(ny, int(round(cj)) + hy + 1)
        if i0 >= i1 or j0 >= j1:
            out.append((float("nan"), float("nan"), 0))
            continue
        X, Y = np.meshgrid((np.arange(i0, i1) - ci) * sx, (np.arange(j0, j1) - cj) * sy, indexing="ij")
        disc = np.hypot(X, Y) <= rs
        vals = ct.hu[i0:i1, j0:j1, k0:k1][disc].astype(float).ravel()
        if vals.size < 2:
            out.append((float("nan"), float("nan"), int(vals.size)))
            continue
        out.append((float(vals.mean()), float(vals.std(ddof=1)), int(vals.size)))
    return out


def _line_check(spec: RodSpec, hu: np.ndarray) -> str | None:
    """Why the rods' HU do not make a calibration line, or None when they do.

    The same form as :func:`fit_rods`: ``HU`` on K, or ``HU - W`` on K when a
    rod has a certificate water density; the slope and intercept are checked
    after conversion to ``sigma_CT``, ``beta_CT``.
    """
    if not np.all(np.isfinite(hu)):
        return "a rod lies outside the image"
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods], float)
    certificate = any(r.water_mg_cm3 is not None for r in spec.rods)
    y = hu - np.array([r.water_used_mg_cm3 for r in spec.rods]) if certificate else hu
    order = np.argsort(ks)
    if not np.all(np.diff(y[order]) > 0):
        return ("the rods' HU do not rise with their K2HPO4 ("
                + ", ".join(f"{k:g}: {h:.0f} HU" for k, h in zip(ks[order], hu[order])) + ")")
    fit = stats.linregress(ks, y)
    r2 = float(fit.rvalue) ** 2
    if r2 < MIN_R2:
        return f"the rods' HU are not linear in K2HPO4 (r2 {r2:.3f} < {MIN_R2})"
    sigma, beta = (qct_pro_from_reference(fit.slope, fit.intercept) if certificate
                   else (fit.slope, fit.intercept))
    if not SIGMA_RANGE[0] <= sigma <= SIGMA_RANGE[1]:
        return (f"slope {sigma:.2f} HU per mg/cm3 is outside the plausible {SIGMA_RANGE[0]:g}-"
                f"{SIGMA_RANGE[1]:g}")
    if abs(beta) > MAX_ABS_BETA_HU:
        return f"intercept {beta:.0f} HU is outside +-{MAX_ABS_BETA_HU:g} HU"
    return None


def _patient_centre_y(mean: np.ndarray, sy: float) -> float | None:
    """Pixel row (j) of the patient's centroid in the slice-averaged image, or None without a patient.

    The patient is the largest region above :data:`BODY_HU` after an opening;
    a region less than :data:`MIN_PATIENT_DEPTH_MM` deep (front to back) is
    taken for a phantom scanned on its own, and None is returned.
    """
    from ctbmd.masks import largest_component

    body = ndi.binary_opening(mean > BODY_HU, iterations=2)
    if not body.any():
        return None
    body = largest_component(body[:, :, None])[:, :, 0]
    rows = np.nonzero(body.any(axis=0))[0]
    if (rows[-1] - rows[0] + 1) * sy < MIN_PATIENT_DEPTH_MM:
        return None
    return float(np.nonzero(body)[1].mean())


def find_rods(ct: CTVolume, spec: RodSpec, z_range_mm: tuple[float, float] | None = None) -> RodMeasurement:
    """Find and measure the calibration rods of a synchronous phantom in a CT.

    The rods are cylinders along z in a block that lies under (posterior to)
    the patient. The slices of the z range are averaged to cut noise, and in
    that image the search takes disc-shaped blobs of the rod diameter that
    stand out from their surroundings (uniform inside, a sharp edge at the
    rod's radius on all four sides), then the equally spaced left-right row
    of ``len(spec.rods)`` slots through them that matches the most blobs and
    lies behind the patient's centre. A rod that does not stand out (its HU
    equals the block's, e.g. K = 0 in a water-equivalent block) is placed by
    the row's spacing and order; at most one may be missing. The row is read
    in the spec's order (increasing LPS x) or, when the HU say so, reversed.
    With ``spec.centres_lps_mm`` the rods are measured at those centres and
    nothing is searched.

    Each rod is sampled as a disc of 0.6 times its radius (leaving out the
    partial-volume edge) on every slice of the z range. The measured HU must
    rise with K2HPO4, fit a line with r^2 >= 0.99, a slope of 0.4-5 HU per
    mg/cm^3 and an intercept within +-150 HU; otherwise nothing is returned.

    Parameters
    ----------
    ct : CTVolume
        The scan (canonical L, P, S axes).
    spec : RodSpec
        The phantom.
    z_range_mm : (float, float), optional
        LPS z (mm) of the slices to use; default the central 60% of the scan.

    Returns
    -------
    RodMeasurement
        Readings in the spec's order; centres in LPS mm.

    Raises
    ------
    InvalidInputError
        (exit 3) ``"<path>: calibration rods not found: <why>"`` when no row of
        rods is found or the rods' HU do not make a line.
    UsageError
        (exit 2) A z range that holds no slice.
    """
    k0, k1, zs = _slice_range(ct, z_range_mm)
    z_lo, z_hi = float(min(zs[k0], zs[k1 - 1])), float(max(zs[k0], zs[k1 - 1]))
    sx, sy = float(ct.spacing_mm[0]), float(ct.spacing_mm[1])
    radius = float(spec.diameter_mm) / 2.0
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods], float)
    n = len(spec.rods)
    a = ct.affine_lps
    k_mid = 0.5 * (k0 + k1 - 1)

    def to_lps(ij):
        p = ct.index_to_lps(np.array([ij[0], ij[1], k_mid]))
        return float(p[0]), float(p[1])

    def finish(centres_ij, visible, located, rev, surround):
        samples = _sample_rods(ct, centres_ij, radius, k0, k1)
        readings = tuple(RodReading(rod=rod, centre_lps_mm=to_lps(c), hu_mean=s[0], hu_sd=s[1], n_voxels=s[2],
                                    visible=bool(v))
                         for rod, c, s, v in zip(spec.rods, centres_ij, samples, visible))
        return RodMeasurement(readings=readings, z_range_mm=(z_lo, z_hi), n_slices=k1 - k0, located=located,
                              reversed=rev, surround_hu=surround, path=ct.info.path or None)

    if spec.centres_lps_mm is not None:
        centres_ij = []
        for x, y in spec.centres_lps_mm:
            z = a[2, 3] + a[2, 2] * k_mid
            ijk = np.linalg.solve(a[:3, :3], np.array([x, y, z]) - a[:3, 3])
            centres_ij.append(ijk[:2])
        meas = finish(np.array(centres_ij), [False] * n, "given", False, None)
        why = _line_check(spec, np.array([r.hu_mean for r in meas.readings]))
        if why:
            raise _not_found(ct, f"at the given centres {why}")
        return meas

    mean = ct.hu[:, :, k0:k1].astype(np.float64).mean(axis=2)
    noise_mean = _noise_of_mean(ct.hu, k0, k1)
    y_patient = _patient_centre_y(mean, sy)
    blobs = _candidates(mean, radius, sx, sy, noise_mean, j_min=y_patient)
    need = max(2, n - 1)
    where = "behind the patient" if y_patient is not None else "in the image"
    if len(blobs) < need:
        raise _not_found(ct, f"{len(blobs)} disc(s) of {spec.diameter_mm:g} mm {where} stand out, "
                             f"{need} of the {n} rods are needed")
    hyps = _row_hypotheses(blobs, n, float(spec.diameter_mm), sx, sy)
    hyps = [h for h in hyps if h[0] >= need]
    if not hyps:
        raise _not_found(ct, f"no equally spaced row of {need} or more discs of {spec.diameter_mm:g} mm "
                             f"among the {len(blobs)} found {where}")
    best_why = None
    best = None
    for n_hit, rms, slots, matched in hyps[:50]:
        if n_hit < hyps[0][0]:
            break
        centres_ij = slots / np.array([sx, sy])
        hit = matched >= 0
        surrounds = np.array([blobs[i].surround for i in matched[hit]])
        surround = float(np.median(surrounds))
        if np.any(np.abs(surrounds - surround) > 30.0):
            best_why = best_why or "the discs of the best row do not lie in one block (their surroundings differ)"
            continue
        # an empty slot must look like the block: uniform and of the block's HU
        empty_ok = True
        for k in np.nonzero(~hit)[0]:
            blob = _examine(mean, centres_ij[k], radius, sx, sy, noise_mean, refine=False)
            if not (np.isfinite(blob.inner) and abs(blob.inner - surround) < MIN_CONTRAST_HU * 2
                    and blob.inner_sd <= 4.0 * noise_mean + 5.0 and abs(blob.surround - surround) <= 30.0):
                empty_ok = False
        if not empty_ok:
            best_why = best_why or "a rod of the best row is neither visible nor uniform block"
            continue
        hu = np.array([s[0] for s in _sample_rods(ct, centres_ij, radius, k0, k1)])
        for rev in (False, True):
            h = hu[::-1] if rev else hu
            why = _line_check(spec, h)
            if why is None:
                score = (float(stats.linregress(ks, h).rvalue) ** 2, -rms)
                if best is None or score > best[0]:
                    best = (score, centres_ij[::-1] if rev else centres_ij, hit[::-1] if rev else hit, rev, surround)
            elif not rev:
                best_why = best_why or why
    if best is None:
        raise _not_found(ct, best_why or "no row of rods fits a calibration line")
    _, centres_ij, hit, rev, surround = best
    return finish(centres_ij, hit, "detected", rev, surround)


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class RodFit:
    """A rod phantom's calibration line in the QCT Pro convention.

    Attributes
    ----------
    sigma_ct : float
        HU per mg/cm^3 K2HPO4.
    beta_ct : float
        HU at zero K2HPO4.
    sigma_ref, beta_ref : float or None
        The Mindways certificate-form fit ``HU - W = sigma_ref K + beta_ref``
        when any rod has a certificate water density, else None.
    r2 : float
        Coefficient of determination of the fitted form.
    sigma_ct_se, beta_ct_se : float
        Standard errors (HU per mg/cm^3, HU) of slope and intercept
        (``scipy.stats.linregress``; 0 for an exact fit, NaN with 2 points).
    residuals_hu : tuple of float
        Measured minus fitted HU per rod, in the spec's order.
    form : str
        ``"qct_pro"`` (``HU = sigma_CT K + beta_CT`` fitted directly) or
        ``"certificate_water"`` (``HU - W`` fitted, then converted).
    """

    sigma_ct: float
    beta_ct: float
    sigma_ref: float | None
    beta_ref: float | None
    r2: float
    sigma_ct_se: float
    beta_ct_se: float
    residuals_hu: tuple[float, ...]
    form: str


def fit_rods(measurement: RodMeasurement, spec: RodSpec) -> RodFit:
    """Fit the rods' mean HU against K2HPO4 (``scipy.stats.linregress``).

    When no rod carries a certificate water density the line
    ``HU = sigma_CT K + beta_CT`` is fitted directly. Otherwise the Mindways
    form ``HU - W = sigma_ref K + beta_ref`` is fitted (a rod without ``W``
    takes the QCT Pro equivalent ``999.6 - 0.2174 K``) and converted with
    ``sigma_CT = sigma_ref - 0.2174``, ``beta_CT = beta_ref + 999.6`` (QCT PRO
    User Guide v5.0; :func:`ctbmd.materials.qct_pro_from_reference`).

    Parameters
    ----------
    measurement : RodMeasurement
        From :func:`find_rods` (or built by hand); its readings' ``hu_mean`` are used.
    spec : RodSpec
        The phantom; its rods give K and W and must match the readings in number.

    Returns
    -------
    RodFit

    Raises
    ------
    UsageError
        (exit 2) Readings and spec differ in number of rods.
    InvalidInputError
        (exit 3) A rod HU is not finite.
    """
    if len(measurement.readings) != len(spec.rods):
        raise UsageError(f"{len(measurement.readings)} rod readings for a phantom of {len(spec.rods)} rods")
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods], float)
    hu = np.array([r.hu_mean for r in measurement.readings], float)
    if not np.all(np.isfinite(hu)):
        raise InvalidInputError("calibration rods not found: a rod's HU is not finite", measurement.path)
    certificate = any(r.water_mg_cm3 is not None for r in spec.rods)
    if certificate:
        water = np.array([r.water_used_mg_cm3 for r in spec.rods], float)
        res = stats.linregress(ks, hu - water)
        sigma_ref, beta_ref = float(res.slope), float(res.intercept)
        sigma, beta = qct_pro_from_reference(sigma_ref, beta_ref)
        fitted = water + sigma_ref * ks + beta_ref
    else:
        res = stats.linregress(ks, hu)
        sigma_ref = beta_ref = None
        sigma, beta = float(res.slope), float(res.intercept)
        fitted = sigma * ks + beta
    return RodFit(sigma_ct=float(sigma), beta_ct=float(beta), sigma_ref=sigma_ref, beta_ref=beta_ref,
                  r2=float(res.rvalue) ** 2, sigma_ct_se=float(res.stderr), beta_ct_se=float(res.intercept_stderr),
                  residuals_hu=tuple(float(v) for v in hu - fitted),
                  form="certificate_water" if certificate else "qct_pro")


def monoenergetic_equivalent_kev(sigma_ct: float) -> float | None:
    """Energy (keV) at which an ideal monoenergetic beam gives ``sigma_ct`` (:func:`ctbmd.materials.qct_pro_line`).

    Searched over 40-120 keV (0.05 keV grid, linear interpolation); None when
    ``sigma_ct`` lies outside what that range gives (3.26 to 0.84 HU per mg/cm^3).
    Informative only: a polychromatic beam is not one energy.
    """
    e, s = _sigma_grid()
    if not (s[-1] <= sigma_ct <= s[0]):
        return None
    return float(np.interp(sigma_ct, s[::-1], e[::-1]))


@lru_cache(maxsize=1)
def _sigma_grid() -> tuple[np.ndarray, np.ndarray]:
    """Energies (keV, 0.05 keV steps over ENERGY_SEARCH_KEV) and the ideal QCT Pro slope at each."""
    e = np.arange(ENERGY_SEARCH_KEV[0], ENERGY_SEARCH_KEV[1] + 1e-9, 0.05)
    return e, np.asarray(qct_pro_line(e)[0], float)


def _energy_sd(sigma: float, se: float, energy: float | None) -> float | None:
    if energy is None or not math.isfinite(se):
        return None
    e, s = _sigma_grid()
    slope = float(np.interp(energy, e[1:], np.diff(s) / np.diff(e)))
    return abs(se / slope) if slope else None


def t_quantile_975(n_rods: int) -> float:
    """97.5% quantile of Student's t with ``n_rods - 2`` degrees of freedom (scipy.stats); 1.96 for n > 200."""
    return float(stats.t.ppf(0.975, max(1, n_rods - 2))) if n_rods <= 200 else 1.96


def rod_calibration(fit: RodFit, measurement: RodMeasurement, ct: CTVolume) -> Calibration:
    """The :class:`~ctbmd.types.Calibration` of a synchronous rod phantom.

    Parameters
    ----------
    fit : RodFit
        From :func:`fit_rods`.
    measurement : RodMeasurement
        From :func:`find_rods`.
    ct : CTVolume
        The scan (for its kVp).

    Returns
    -------
    Calibration
        ``method="rods"``; ``sigma_ct_95 = sigma_ct +- t SE`` and
        ``beta_ct_95 = beta_ct +- t SE``, with ``t`` the 97.5% quantile of
        Student's t with ``n_rods - 2`` degrees of freedom (3.18 for 5 rods);
        ``effective_energy_kev`` is the monoenergetic equivalent of ``sigma_ct``
        (40-120 keV, informative only) with ``energy_sd_kev`` from the slope's
        SE; ``residuals_hu`` per rod (keys ``rod_<K>``); ``details`` holds the
        rods (K, W, HU, SD, voxels, centre LPS mm, visible) and the fit.
        ``dw_cm`` is None (the pipeline knows the patient's size).
    """
    se = fit.sigma_ct_se if math.isfinite(fit.sigma_ct_se) else 0.0
    beta_se = fit.beta_ct_se if math.isfinite(fit.beta_ct_se) else 0.0
    t95 = t_quantile_975(len(measurement.readings))
    energy = monoenergetic_equivalent_kev(fit.sigma_ct)
    flags = []
    if energy is None:
        flags.append(f"rod slope {fit.sigma_ct:.3f} HU per mg/cm3 matches no monoenergetic beam of 40-120 keV")
    hidden = [r for r in measurement.readings if not r.visible]
    if measurement.located == "detected" and hidden:
        flags.append("rod(s) " + ", ".join(f"{r.rod.k2hpo4_mg_cm3:g}" for r in hidden)
                     + " mg/cm3 did not stand out from the block and were placed by the row's spacing")
    if measurement.reversed:
        flags.append("rod row read in decreasing LPS x (phantom turned round relative to the rod list)")
    if fit.r2 < 0.999:
        flags.append(f"rod fit r2 {fit.r2:.4f} < 0.999")
    rods = [{"k2hpo4_mg_cm3": r.rod.k2hpo4_mg_cm3, "water_mg_cm3": r.rod.water_mg_cm3,
             "hu_mean": round(r.hu_mean, 3), "hu_sd": round(r.hu_sd, 3), "n_voxels": r.n_voxels,
             "centre_lps_mm": [round(v, 2) for v in r.centre_lps_mm], "visible": r.visible,
             "residual_hu": round(res, 3)}
            for r, res in zip(measurement.readings, fit.residuals_hu)]
    details = {
        "rods": rods,
        "fit": {k: v for k, v in asdict(fit).items() if k != "residuals_hu"},
        "z_range_mm": list(measurement.z_range_mm), "n_slices": measurement.n_slices,
        "located": measurement.located, "reversed": measurement.reversed, "surround_hu": measurement.surround_hu,
        "convention": "QCT PRO User Guide v5.0: HU = sigma_ct K + beta_ct; HU - W = sigma_ref K + beta_ref, "
                      "sigma_ct = sigma_ref - 0.2174, beta_ct = beta_ref + 999.6",
    }
    return Calibration(
        ok=True, method="rods",
        description=(f"synchronous K2HPO4 rod phantom ({len(rods)} rods, r2 {fit.r2:.4f}), "
                     "QCT Pro convention"),
        sigma_ct=fit.sigma_ct, beta_ct=fit.beta_ct,
        sigma_ct_95=(fit.sigma_ct - t95 * se, fit.sigma_ct + t95 * se),
        beta_ct_95=(fit.beta_ct - t95 * beta_se, fit.beta_ct + t95 * beta_se),
        effective_energy_kev=energy, energy_sd_kev=_energy_sd(fit.sigma_ct, se, energy),
        kvp=None if ct.info.kvp is None else float(ct.info.kvp),
        kvp_source="header" if ct.info.kvp is not None else None, dw_cm=None,
        tissues={}, residuals_hu={f"rod_{r['k2hpo4_mg_cm3']:g}": r["residual_hu"] for r in rods},
        qc_flags=tuple(flags), details=details)


# --------------------------------------------------------------------------- asynchronous calibration


@dataclass(frozen=True)
class ScannerProfile:
    """An asynchronous calibration: a rod phantom's line for one scanner, kVp and kernel.

    Attributes
    ----------
    manufacturer, model : str or None
        The scanner (DICOM Manufacturer; the model is given by the user).
    kvp : float
        Tube voltage (kV) the phantom was scanned at; a scan must match it within 1 kV.
    convolution_kernel : str or None
        Reconstruction kernel; a scan whose kernel is known must match it.
    sigma_ct, beta_ct : float
        The phantom scan's line (QCT Pro convention), HU per mg/cm^3 and HU.
    sigma_ct_se : float
        Standard error of ``sigma_ct``.
    dw_cm : float or None
        Water-equivalent diameter (cm) of what was in the beam in the phantom scan.
    effective_energy_kev : float or None
        Monoenergetic equivalent of ``sigma_ct`` (informative).
    rods : tuple of dict
        The rods: ``k2hpo4_mg_cm3``, ``water_mg_cm3``, ``hu_mean``, ``hu_sd``, ``n_voxels``.
    source : str or None
        The phantom scan's path.
    created : str
        ISO date the profile was made.
    ctbmd_version : str
        Version of ctbmd that made it.
    path : str or None
        Where it was loaded from (not saved; not compared).
    """

    manufacturer: str | None
    model: str | None
    kvp: float
    convolution_kernel: str | None
    sigma_ct: float
    beta_ct: float
    sigma_ct_se: float
    dw_cm: float | None
    effective_energy_kev: float | None
    rods: tuple[dict, ...]
    source: str | None
    created: str
    ctbmd_version: str
    path: str | None = field(default=None, compare=False)


def _body_dw_cm(ct: CTVolume, k0: int, k1: int) -> float | None:
    from ctbmd.calibrate.energy import water_equivalent_diameter_cm
    from ctbmd.masks import largest_component

    hu = ct.hu[:, :, k0:k1]
    body = largest_component(ndi.binary_opening(hu > BODY_HU, iterations=2))
    if not body.any():
        return None
    dw = water_equivalent_diameter_cm(hu, body, ct.spacing_mm)
    return dw if math.isfinite(dw) else None


def make_profile(ct: CTVolume, spec: RodSpec, *, model: str | None = None, kvp: float | None = None,
                 z_range_mm: tuple[float, float] | None = None, dw_cm: float | None = None,
                 created: str | None = None) -> ScannerProfile:
    """Make a scanner profile from a scan of the rod phantom (asynchronous calibration).

    Parameters
    ----------
    ct : CTVolume
        A scan holding the rod phantom (on its own, or under a patient or a
        body-size phantom), at the kVp and kernel the profile is for.
    spec : RodSpec
        The phantom.
    model : str, optional
        Scanner model, recorded.
    kvp : float, optional
        Tube voltage (kV) when the scan's header has none; must agree with the header's within 1 kV.
    z_range_mm : (float, float), optional
        Slices to use (LPS z mm), as in :func:`find_rods`.
    dw_cm : float, optional
        Water-equivalent diameter (cm) of the phantom scan; default measured
        (AAPM Report 220) on the largest object above -400 HU in the z range.
    created : str, optional
        ISO date; default today.

    Returns
    -------
    ScannerProfile

    Raises
    ------
    InvalidInputError
        (exit 3) Rods not found (see :func:`find_rods`).
    UsageError
        (exit 2) No kVp known, or ``kvp`` contradicting the header.
    """
    from ctbmd import __version__

    header = ct.info.kvp
    if header is not None and kvp is not None and abs(float(header) - float(kvp)) > MAX_KVP_DIFFERENCE:
        raise UsageError(f"kVp {kvp:g} contradicts the phantom scan's header ({header:g} kVp)", ct.info.path)
    use_kvp = header if header is not None else kvp
    if use_kvp is None:
        raise UsageError("the phantom scan's header has no kVp: give the tube voltage", ct.info.path)
    meas = find_rods(ct, spec, z_range_mm)
    fit = fit_rods(meas, spec)
    if dw_cm is None:
        k0, k1, _ = _slice_range(ct, z_range_mm)
        dw_cm = _body_dw_cm(ct, k0, k1)
    rods = tuple({"k2hpo4_mg_cm3": r.rod.k2hpo4_mg_cm3, "water_mg_cm3": r.rod.water_mg_cm3,
                  "hu_mean": r.hu_mean, "hu_sd": r.hu_sd, "n_voxels": r.n_voxels} for r in meas.readings)
    return ScannerProfile(
        manufacturer=ct.info.manufacturer, model=model, kvp=float(use_kvp),
        convolution_kernel=ct.info.convolution_kernel, sigma_ct=fit.sigma_ct, beta_ct=fit.beta_ct,
        sigma_ct_se=fit.sigma_ct_se if math.isfinite(fit.sigma_ct_se) else 0.0,
        dw_cm=None if dw_cm is None else float(dw_cm),
        effective_energy_kev=monoenergetic_equivalent_kev(fit.sigma_ct), rods=rods,
        source=ct.info.path or None, created=created or _dt.date.today().isoformat(),
        ctbmd_version=str(__version__))


_PROFILE_FIELDS = ("manufacturer", "model", "kvp", "convolution_kernel", "sigma_ct", "beta_ct", "sigma_ct_se",
                   "dw_cm", "effective_energy_kev", "rods", "source", "created", "ctbmd_version")


def save_profile(profile: ScannerProfile, path: str | Path) -> Path:
    """Write a profile as JSON (schema ``ctbmd-scanner-profile 1``), atomically.

    Parameters
    ----------
    profile : ScannerProfile
    path : str or Path
        Destination file.

    Returns
    -------
    Path
        ``path``.
    """
    from ctbmd.io import write_atomic

    data = {"schema": PROFILE_SCHEMA, **{k: getattr(profile, k) for k in _PROFILE_FIELDS}}
    data["rods"] = [dict(r) for r in profile.rods]
    text = json.dumps(data, indent=1) + "\n"
    return write_atomic(path, lambda p: p.write_text(text))


def load_profile(path: str | Path) -> ScannerProfile:
    """Read a profile written by :func:`save_profile`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ScannerProfile
        With ``path`` set.

    Raises
    ------
    InvalidInputError
        (exit 3) Missing or unreadable file, not JSON, another schema, a
        missing field or a value of the wrong type; one line naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError("no such scanner profile", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"scanner profile is not valid JSON ({' '.join(str(exc).split())})", path) from None
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA:
        raise InvalidInputError(f"not a ctbmd scanner profile (schema is not {PROFILE_SCHEMA!r})", path)
    missing = [k for k in _PROFILE_FIELDS if k not in data]
    if missing:
        raise InvalidInputError(f"scanner profile lacks {', '.join(missing)}", path)

    def num(key, optional=False):
        v = data[key]
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise InvalidInputError(f"scanner profile field {key} is not a number", path)
        return float(v)

    def text(key):
        v = data[key]
        if v is not None and not isinstance(v, str):
            raise InvalidInputError(f"scanner profile field {key} is not text", path)
        return v

    if not isinstance(data["rods"], list) or not all(isinstance(r, dict) for r in data["rods"]):
        raise InvalidInputError("scanner profile field rods is not a list of rods", path)
    profile = ScannerProfile(
        manufacturer=text("manufacturer"), model=text("model"), kvp=num("kvp"),
        convolution_kernel=text("convolution_kernel"), sigma_ct=num("sigma_ct"), beta_ct=num("beta_ct"),
        sigma_ct_se=num("sigma_ct_se"), dw_cm=num("dw_cm", True),
        effective_energy_kev=num("effective_energy_kev", True), rods=tuple(dict(r) for r in data["rods"]),
        source=text("source"), created=str(text("created")), ctbmd_version=str(text("ctbmd_version")),
        path=str(path))
    if not SIGMA_RANGE[0] <= profile.sigma_ct <= SIGMA_RANGE[1]:
        raise InvalidInputError(f"scanner profile sigma_ct {profile.sigma_ct:g} is outside "
                                f"{SIGMA_RANGE[0]:g}-{SIGMA_RANGE[1]:g} HU per mg/cm3", path)
    return profile


def _same_kernel(a: str, b: str) -> bool:
    return " ".join(str(a).split()).upper() == " ".join(str(b).split()).upper()


def check_profile(profile: ScannerProfile, info: ScanInfo) -> None:
    """Refuse a profile made for another tube voltage or reconstruction kernel than the scan's.

    Parameters
    ----------
    profile : ScannerProfile
    info : ScanInfo
        The patient scan's header values (``kvp`` in kV, ``convolution_kernel``);
        an unknown value is not checked.

    Raises
    ------
    UsageError
        (exit 2) The kVp differs by more than 1 kV, or both kernels are known
        and differ (kernels compared without case or extra spaces). Internal
        calibration is scanner-, kV- and kernel-specific (Engelke, Chaudry &
        Bartenschlager, Curr Osteoporos Rep 2023).
    """
    where = profile.path or info.path or None
    if info.kvp is not None and abs(float(info.kvp) - profile.kvp) > MAX_KVP_DIFFERENCE:
        raise UsageError(f"scanner profile is for {profile.kvp:g} kVp but the scan was taken at {info.kvp:g} kVp",
                         where)
    kernel = info.convolution_kernel
    if kernel and profile.convolution_kernel and not _same_kernel(kernel, profile.convolution_kernel):
        raise UsageError(f"scanner profile is for kernel {profile.convolution_kernel!r} but the scan used "
                         f"{kernel!r}", where)


def profile_calibration(profile: ScannerProfile, ct: CTVolume, dw_cm: float | None) -> Calibration:
    """The :class:`~ctbmd.types.Calibration` of a patient scan from a scanner profile (asynchronous).

    The profile's intercept is kept; its slope is scaled for the patient's
    size. A bigger patient hardens the beam (filters out the low energies),
    which lowers the K2HPO4 slope; with ``E(kVp, Dw)`` the effective-energy
    table of :func:`ctbmd.calibrate.energy.effective_energy_kev` and ``s(E)``
    the ideal slope of :func:`ctbmd.materials.qct_pro_line`,

    ``sigma_patient = sigma_profile * s(E(kVp, Dw_patient)) / s(E(kVp, Dw_profile))``.

    Asynchronous and synchronous BMD agreed within 1.4-6.7% in Wang et al.
    (Sci Rep 2017;7:6284). The 95% interval of the slope is the profile's
    +- t SE (Student's t, ``n_rods - 2`` degrees of freedom), scaled alike; it
    leaves out the drift of the scanner since the profile was made and the
    uncertainty of the size adjustment.

    Parameters
    ----------
    profile : ScannerProfile
    ct : CTVolume
        The patient scan (its kVp, kernel and manufacturer are checked).
    dw_cm : float or None
        The patient's water-equivalent diameter (cm); None or NaN: no size
        adjustment (and a QC flag).

    Returns
    -------
    Calibration
        ``method="scanner_profile"``; ``kvp_source`` ``header`` or ``profile``.

    Raises
    ------
    UsageError
        (exit 2) The scan's kVp differs from the profile's by more than 1 kV,
        or both kernels are known and differ.
    """
    from ctbmd.calibrate.energy import effective_energy_kev

    check_profile(profile, ct.info)
    flags = []
    scan_kvp = ct.info.kvp
    kernel = ct.info.convolution_kernel
    if scan_kvp is None:
        flags.append(f"kVp not in the scan's header: the profile's {profile.kvp:g} kVp assumed")
        kvp, kvp_source = profile.kvp, "profile"
    else:
        kvp, kvp_source = float(scan_kvp), "header"
    if kernel is None and profile.convolution_kernel:
        flags.append("reconstruction kernel not in the scan's header: not checked against the profile")
    if ct.info.manufacturer and profile.manufacturer and \
            ct.info.manufacturer.strip().upper() != profile.manufacturer.strip().upper():
        flags.append(f"scanner manufacturer {ct.info.manufacturer!r} differs from the profile's "
                     f"{profile.manufacturer!r}")
    ratio = 1.0
    e_prof = e_pat = None
    if dw_cm is None or not math.isfinite(float(dw_cm)) or profile.dw_cm is None:
        flags.append("patient or phantom size unknown: profile slope not adjusted for beam hardening")
        dw_use = None if dw_cm is None or not math.isfinite(float(dw_cm)) else float(dw_cm)
    else:
        dw_use = float(dw_cm)
        e_prof = effective_energy_kev(kvp, profile.dw_cm)[0]
        e_pat = effective_energy_kev(kvp, dw_use)[0]
        ratio = float(qct_pro_line(e_pat)[0] / qct_pro_line(e_prof)[0])
    sigma = profile.sigma_ct * ratio
    se = profile.sigma_ct_se * ratio
    energy = None
    if profile.effective_energy_kev is not None:
        energy = profile.effective_energy_kev + ((e_pat - e_prof) if e_pat is not None else 0.0)
    details = {
        "profile": {k: getattr(profile, k) for k in _PROFILE_FIELDS if k != "rods"},
        "profile_path": profile.path,
        "size_ratio": ratio,
        "table_energy_kev": {"profile": e_prof, "patient": e_pat},
        "agreement": "asynchronous vs synchronous BMD within 1.4-6.7% (Wang et al., Sci Rep 2017;7:6284)",
    }
    size = (f", slope scaled x{ratio:.3f} for patient Dw {dw_use:.1f} cm vs phantom {profile.dw_cm:.1f} cm"
            if e_pat is not None else "")
    name = " ".join(filter(None, [profile.manufacturer, profile.model, f"{profile.kvp:g} kVp",
                                  profile.convolution_kernel]))
    return Calibration(
        ok=True, method="scanner_profile",
        description=f"asynchronous phantom calibration (scanner profile {name}, made {profile.created}){size}",
        sigma_ct=sigma, beta_ct=profile.beta_ct,
        sigma_ct_95=(sigma - t_quantile_975(len(profile.rods)) * se, sigma + t_quantile_975(len(profile.rods)) * se),
        effective_energy_kev=energy, energy_sd_kev=None, kvp=kvp, kvp_source=kvp_source, dw_cm=dw_use,
        tissues={}, residuals_hu={}, qc_flags=tuple(flags), details=details)
