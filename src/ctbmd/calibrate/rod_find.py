"""Finding and measuring the rods of a synchronous rod phantom in a CT (:func:`find_rods`).

Frame: rod centres are LPS mm ``(x, y)``; the image steps (blob search, row
matching, sampling) are in :mod:`ctbmd.calibrate.rod_search`.

Errors: a scan in which the rods cannot be found or do not fit a line raises
:class:`~ctbmd.errors.InvalidInputError` (exit 3), ``"calibration rods not
found: <why>"``; a z range holding no slice raises
:class:`~ctbmd.errors.UsageError` (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats

from ctbmd.calibrate.rod_search import (DiscBlob, RowHypothesis, disc_candidates, examine_disc, noise_of_mean,
                                        patient_centre_y, row_hypotheses, sample_rods)
from ctbmd.calibrate.rod_spec import (DEFAULT_Z_FRACTION, MAX_ABS_BETA_HU, MIN_CONTRAST_HU, MIN_R2, SIGMA_RANGE,
                                      Rod, RodSpec)
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.materials import qct_pro_from_reference
from ctbmd.types import CTVolume


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
        :data:`~ctbmd.calibrate.rod_spec.SAMPLE_RADIUS_FRACTION` of the rod's radius on every slice of the z range.
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


class SliceRange(NamedTuple):
    """The slices a rod measurement averages.

    Attributes
    ----------
    k0, k1 : int
        First slice and one past the last (index along the S axis).
    zs : numpy.ndarray
        ``(nz,)`` LPS z (mm) of every slice of the scan.
    """

    k0: int
    k1: int
    zs: np.ndarray


def slice_range(ct: CTVolume, z_range_mm: tuple[float, float] | None) -> SliceRange:
    """The slices of ``z_range_mm`` (LPS z mm, either order), or the central 60% of the scan when None.

    Parameters
    ----------
    ct : CTVolume
    z_range_mm : (float, float) or None

    Returns
    -------
    SliceRange

    Raises
    ------
    UsageError
        (exit 2) The range holds no slice.
    """
    nz = ct.hu.shape[2]
    ks = np.arange(nz)
    zs = ct.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), ks], axis=1))[:, 2]
    if z_range_mm is None:
        n = max(1, int(round(nz * DEFAULT_Z_FRACTION)))
        k0 = (nz - n) // 2
        return SliceRange(k0, k0 + n, zs)
    lo, hi = sorted(float(v) for v in z_range_mm)
    sel = np.nonzero((zs >= lo - 1e-6) & (zs <= hi + 1e-6))[0]
    if len(sel) == 0:
        raise UsageError(f"rod z range {lo:g} to {hi:g} mm holds no slice of the scan "
                         f"(it covers {zs.min():.1f} to {zs.max():.1f} mm)")
    return SliceRange(int(sel[0]), int(sel[-1]) + 1, zs)


def _line_check(spec: RodSpec, hu: np.ndarray) -> str | None:
    """Why the rods' HU do not make a calibration line, or None when they do.

    The same form as :func:`ctbmd.calibrate.rod_fit.fit_rods`: ``HU`` on K, or ``HU - W`` on K when a
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
    k0, k1, zs = slice_range(ct, z_range_mm)
    if spec.centres_lps_mm is not None:
        return _measure_given(ct, spec, k0, k1, zs)
    sx, sy = float(ct.spacing_mm[0]), float(ct.spacing_mm[1])
    radius = float(spec.diameter_mm) / 2.0
    n = len(spec.rods)
    mean = ct.hu[:, :, k0:k1].astype(np.float64).mean(axis=2)
    noise_mean = noise_of_mean(ct.hu, k0, k1)
    y_patient = patient_centre_y(mean, sy)
    blobs = disc_candidates(mean, radius, sx, sy, noise_mean, j_min=y_patient)
    need = max(2, n - 1)
    where = "behind the patient" if y_patient is not None else "in the image"
    if len(blobs) < need:
        raise _not_found(ct, f"{len(blobs)} disc(s) of {spec.diameter_mm:g} mm {where} stand out, "
                             f"{need} of the {n} rods are needed")
    hyps = row_hypotheses(blobs, n, float(spec.diameter_mm), sx, sy)
    hyps = [h for h in hyps if h[0] >= need]
    if not hyps:
        raise _not_found(ct, f"no equally spaced row of {need} or more discs of {spec.diameter_mm:g} mm "
                             f"among the {len(blobs)} found {where}")
    row = _best_row(ct, spec, mean, noise_mean, blobs, hyps, k0, k1)
    return _measurement(ct, spec, k0, k1, zs, row.centres_ij, row.visible, "detected", row.reversed, row.surround_hu)


class _RowChoice(NamedTuple):
    """The row chosen by :func:`_best_row`: centres (pixel units) and visibility in the spec's order."""

    centres_ij: np.ndarray
    visible: np.ndarray
    reversed: bool
    surround_hu: float


def _measurement(ct: CTVolume, spec: RodSpec, k0: int, k1: int, zs: np.ndarray, centres_ij: np.ndarray, visible,
                 located: str, rev: bool, surround: float | None) -> RodMeasurement:
    """Sample the rods at ``centres_ij`` (pixel units, spec order) on slices ``k0 .. k1 - 1``."""
    z_lo, z_hi = float(min(zs[k0], zs[k1 - 1])), float(max(zs[k0], zs[k1 - 1]))
    radius = float(spec.diameter_mm) / 2.0
    k_mid = 0.5 * (k0 + k1 - 1)

    def to_lps(ij):
        p = ct.index_to_lps(np.array([ij[0], ij[1], k_mid]))
        return float(p[0]), float(p[1])

    samples = sample_rods(ct, centres_ij, radius, k0, k1)
    readings = tuple(RodReading(rod=rod, centre_lps_mm=to_lps(c), hu_mean=s[0], hu_sd=s[1], n_voxels=s[2],
                                visible=bool(v))
                     for rod, c, s, v in zip(spec.rods, centres_ij, samples, visible))
    return RodMeasurement(readings=readings, z_range_mm=(z_lo, z_hi), n_slices=k1 - k0, located=located,
                          reversed=rev, surround_hu=surround, path=ct.info.path or None)


def _measure_given(ct: CTVolume, spec: RodSpec, k0: int, k1: int, zs: np.ndarray) -> RodMeasurement:
    """Measure the rods at the spec's centres (no search); refuse them when they do not make a line."""
    a = ct.affine_lps
    k_mid = 0.5 * (k0 + k1 - 1)
    centres_ij = []
    for x, y in spec.centres_lps_mm:
        z = a[2, 3] + a[2, 2] * k_mid
        ijk = np.linalg.solve(a[:3, :3], np.array([x, y, z]) - a[:3, 3])
        centres_ij.append(ijk[:2])
    meas = _measurement(ct, spec, k0, k1, zs, np.array(centres_ij), [False] * len(spec.rods), "given", False, None)
    why = _line_check(spec, np.array([r.hu_mean for r in meas.readings]))
    if why:
        raise _not_found(ct, f"at the given centres {why}")
    return meas


def _empty_slots_like_block(mean: np.ndarray, centres_ij: np.ndarray, hit: np.ndarray, radius: float, sx: float,
                            sy: float, noise_mean: float, surround: float) -> bool:
    """Whether every empty slot of a row looks like the block: uniform and of the block's HU."""
    ok = True
    for k in np.nonzero(~hit)[0]:
        blob = examine_disc(mean, centres_ij[k], radius, sx, sy, noise_mean, refine=False)
        if not (np.isfinite(blob.inner) and abs(blob.inner - surround) < MIN_CONTRAST_HU * 2
                and blob.inner_sd <= 4.0 * noise_mean + 5.0 and abs(blob.surround - surround) <= 30.0):
            ok = False
    return ok


def _best_row(ct: CTVolume, spec: RodSpec, mean: np.ndarray, noise_mean: float, blobs: list[DiscBlob],
              hyps: list[RowHypothesis], k0: int, k1: int) -> _RowChoice:
    """Of the rows matching the most blobs, the one (read either way) whose HU fit a line best.

    Raises the ``calibration rods not found`` error, with the first reason met, when none fits.
    """
    sx, sy = float(ct.spacing_mm[0]), float(ct.spacing_mm[1])
    radius = float(spec.diameter_mm) / 2.0
    ks = np.array([r.k2hpo4_mg_cm3 for r in spec.rods], float)
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
        if not _empty_slots_like_block(mean, centres_ij, hit, radius, sx, sy, noise_mean, surround):
            best_why = best_why or "a rod of the best row is neither visible nor uniform block"
            continue
        hu = np.array([s[0] for s in sample_rods(ct, centres_ij, radius, k0, k1)])
        for rev in (False, True):
            h = hu[::-1] if rev else hu
            why = _line_check(spec, h)
            if why is None:
                score = (float(stats.linregress(ks, h).rvalue) ** 2, -rms)
                if best is None or score > best[0]:
                    best = (score, _RowChoice(centres_ij[::-1] if rev else centres_ij, hit[::-1] if rev else hit,
                                              rev, surround))
            elif not rev:
                best_why = best_why or why
    if best is None:
        raise _not_found(ct, best_why or "no row of rods fits a calibration line")
    return best[1]
