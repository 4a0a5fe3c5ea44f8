"""Finding disc-shaped rods in a slice-averaged CT image: the image-level steps of
:func:`ctbmd.calibrate.rod_find.find_rods`.

Images are ``(nx, ny)`` arrays on the L, P axes of a canonical CT; centres are
in pixel units ``(i, j)``; ``sx, sy`` are the pixel spacings (mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from ctbmd.calibrate.rod_spec import BODY_HU, MIN_CONTRAST_HU, MIN_PATIENT_DEPTH_MM, SAMPLE_RADIUS_FRACTION
from ctbmd.types import CTVolume


def _disc_kernel(r_lo_mm: float, r_hi_mm: float, sx: float, sy: float) -> np.ndarray:
    hx, hy = int(np.ceil(r_hi_mm / sx)), int(np.ceil(r_hi_mm / sy))
    X, Y = np.meshgrid(np.arange(-hx, hx + 1) * sx, np.arange(-hy, hy + 1) * sy, indexing="ij")
    r = np.hypot(X, Y)
    k = ((r >= r_lo_mm) & (r <= r_hi_mm)).astype(float)
    return k / k.sum()


@dataclass(frozen=True)
class DiscBlob:
    """A disc-shaped candidate rod in the slice-averaged image.

    Attributes
    ----------
    ij : numpy.ndarray
        ``(2,)`` refined centre, pixel units ``(i, j)`` (L, P axes).
    contrast : float
        Mean of the inner disc minus the median of the surround, HU.
    inner, inner_sd : float
        Mean and SD of the inner disc (HU); NaN when it holds no pixel.
    surround : float
        Median of the surrounding ring (1.35-1.75 radii), HU.
    disc : bool
        Whether it passed the disc-shape tests of :func:`examine_disc`.
    """

    ij: np.ndarray
    contrast: float
    inner: float
    inner_sd: float
    surround: float
    disc: bool


class RowHypothesis(NamedTuple):
    """An equally spaced row of rod slots matched to blobs (:func:`row_hypotheses`).

    Attributes
    ----------
    n_matched : int
        Slots matched to a blob.
    rms_mm : float
        RMS distance (mm) of the matched blobs from their slots.
    slots_xy_mm : numpy.ndarray
        ``(n, 2)`` slot centres, pixel index times spacing (mm, L and P axes, from the first voxel).
    matched : numpy.ndarray
        ``(n,)`` int, the blob index of each slot or -1 when empty.
    """

    n_matched: int
    rms_mm: float
    slots_xy_mm: np.ndarray
    matched: np.ndarray


class RodSample(NamedTuple):
    """The voxels sampled in one rod (:func:`sample_rods`): mean and SD (HU, NaN when too few) and count."""

    hu_mean: float
    hu_sd: float
    n_voxels: int


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


def examine_disc(mean: np.ndarray, ij0: np.ndarray, radius_mm: float, sx: float, sy: float,
                 noise_mean: float, refine: bool = True) -> DiscBlob:
    """Refine a candidate's centre (contrast-weighted centroid) and test whether it is a uniform disc.

    The disc tests, on the slice-averaged image around the centre: contrast of
    the inner disc (0.6 R) to the surround (median of 1.35-1.75 R) at least
    :data:`~ctbmd.calibrate.rod_spec.MIN_CONTRAST_HU`; in each quadrant, the 0.7-0.9 R ring holds at
    least 70% of that contrast and the 1.15-1.3 R ring at most 35% (an edge at
    the rod's radius all round); the inner disc is uniform.

    Parameters
    ----------
    mean : numpy.ndarray
        ``(nx, ny)`` slice-averaged HU image (L, P axes).
    ij0 : numpy.ndarray
        ``(2,)`` starting centre, pixel units.
    radius_mm : float
        Rod radius (mm).
    sx, sy : float
        Pixel spacing (mm) along L and P.
    noise_mean : float
        Noise SD (HU) of ``mean`` (:func:`noise_of_mean`).
    refine : bool
        Move the centre to the contrast-weighted centroid (up to 3 steps) before testing.

    Returns
    -------
    DiscBlob
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
        return DiscBlob(ij, 0.0, float("nan"), float("nan"), float("nan"), False)
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
    return DiscBlob(ij, c, inner, inner_sd, surround, bool(ok))


def noise_of_mean(hu: np.ndarray, k0: int, k1: int) -> float:
    """SD (HU) of the slice-averaged image's noise, from the difference of two neighbouring slices.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(nx, ny, nz)`` HU volume.
    k0, k1 : int
        Slices ``k0 .. k1 - 1`` are averaged.

    Returns
    -------
    float
        Robust (MAD) SD of one slice's noise divided by ``sqrt(k1 - k0)``; with
        one slice, from the image minus its 3x3 mean; 10 HU when too little
        is above -900 HU.
    """
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


def disc_candidates(mean: np.ndarray, radius_mm: float, sx: float, sy: float, noise_mean: float,
                    j_min: float | None = None, max_candidates: int = 60) -> list[DiscBlob]:
    """Disc-shaped blobs of the rod's size in the slice-averaged image (either sign of contrast).

    A matched filter (mean of the inner disc minus mean of a surrounding
    annulus) gives the peaks; those whose inner disc is uniform and that lie
    behind pixel row ``j_min`` are refined and tested by :func:`examine_disc`.

    Parameters
    ----------
    mean : numpy.ndarray
        ``(nx, ny)`` slice-averaged HU image.
    radius_mm : float
        Rod radius (mm).
    sx, sy : float
        Pixel spacing (mm).
    noise_mean : float
        Noise SD (HU) of ``mean``.
    j_min : float, optional
        Only blobs behind (greater P index than) this pixel row.
    max_candidates : int
        At most this many blobs, strongest first.

    Returns
    -------
    list of DiscBlob
        Disc-shaped blobs at least one radius apart, strongest contrast first.
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
    blobs: list[DiscBlob] = []
    for p in idx[order]:
        b = examine_disc(mean, p.astype(float), radius_mm, sx, sy, noise_mean)
        if not b.disc:
            continue
        d_mm = [np.hypot((b.ij[0] - o.ij[0]) * sx, (b.ij[1] - o.ij[1]) * sy) for o in blobs]
        if d_mm and min(d_mm) < radius_mm:
            continue
        blobs.append(b)
        if len(blobs) >= max_candidates:
            break
    return blobs


def row_hypotheses(blobs: list[DiscBlob], n: int, diameter_mm: float, sx: float,
                   sy: float) -> list[RowHypothesis]:
    """Equally spaced rows of ``n`` slots through pairs of blobs; each slot matched to a blob or empty.

    Rows run left to right within 10 degrees of the L axis, with a slot spacing of
    0.95-6 rod diameters; a slot is matched to a blob within 0.2 diameters (or 1.5
    pixels), and each row is refitted by least squares through its matched blobs.

    Parameters
    ----------
    blobs : list of DiscBlob
    n : int
        Slots per row (rods of the phantom).
    diameter_mm : float
        Rod diameter (mm).
    sx, sy : float
        Pixel spacing (mm).

    Returns
    -------
    list of RowHypothesis
        Distinct matchings, most blobs matched first, then smallest RMS.
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
                    out.append(RowHypothesis(int(hit.sum()), rms, slots, matched))
    out.sort(key=lambda h: (-h[0], h[1]))
    return out


def sample_rods(ct: CTVolume, centres_ij: np.ndarray, radius_mm: float, k0: int, k1: int) -> list[RodSample]:
    """Mean, SD and count of the voxels within SAMPLE_RADIUS_FRACTION of each rod's radius, slices k0..k1-1.

    Parameters
    ----------
    ct : CTVolume
    centres_ij : numpy.ndarray
        ``(n, 2)`` rod centres, pixel units ``(i, j)``.
    radius_mm : float
        Rod radius (mm).
    k0, k1 : int
        Slice range (``k1`` excluded).

    Returns
    -------
    list of RodSample
        One per centre, in order (SD with ``ddof=1``).
    """
    sx, sy = ct.spacing_mm[0], ct.spacing_mm[1]
    rs = SAMPLE_RADIUS_FRACTION * radius_mm
    out = []
    nx, ny = ct.hu.shape[:2]
    for ci, cj in centres_ij:
        hx, hy = int(np.ceil(rs / sx)) + 1, int(np.ceil(rs / sy)) + 1
        i0, i1 = max(0, int(round(ci)) - hx), min(nx, int(round(ci)) + hx + 1)
        j0, j1 = max(0, int(round(cj)) - hy), min(ny, int(round(cj)) + hy + 1)
        if i0 >= i1 or j0 >= j1:
            out.append(RodSample(float("nan"), float("nan"), 0))
            continue
        X, Y = np.meshgrid((np.arange(i0, i1) - ci) * sx, (np.arange(j0, j1) - cj) * sy, indexing="ij")
        disc = np.hypot(X, Y) <= rs
        vals = ct.hu[i0:i1, j0:j1, k0:k1][disc].astype(float).ravel()
        if vals.size < 2:
            out.append(RodSample(float("nan"), float("nan"), int(vals.size)))
            continue
        out.append(RodSample(float(vals.mean()), float(vals.std(ddof=1)), int(vals.size)))
    return out



def patient_centre_y(mean: np.ndarray, sy: float) -> float | None:
    """Pixel row (j) of the patient's centroid in the slice-averaged image, or None without a patient.

    The patient is the largest region above :data:`~ctbmd.calibrate.rod_spec.BODY_HU` after an opening;
    a region less than :data:`~ctbmd.calibrate.rod_spec.MIN_PATIENT_DEPTH_MM` deep (front to back) is
    taken for a phantom scanned on its own, and None is returned.

    Parameters
    ----------
    mean : numpy.ndarray
        ``(nx, ny)`` slice-averaged HU image.
    sy : float
        Pixel spacing (mm) along P.
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
