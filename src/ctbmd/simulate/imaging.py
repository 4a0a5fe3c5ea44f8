"""Imaging a painted phantom: its water-equivalent diameter (:func:`phantom_dw_cm`) and the CT image
(:func:`render_image`: attenuation, cupping, HU, point-spread function, slice profile, sampling, noise)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ctbmd.simulate.spec import PhantomSpec
from ctbmd.types import VERSE_LABELS, Grid


def phantom_dw_cm(canvas, table: dict) -> float:
    """Water-equivalent diameter (cm, AAPM Report 220) of the painted phantom, over the slices of T11-L5.

    Parameters
    ----------
    canvas : ctbmd.simulate.anatomy.Canvas
        The painted phantom: material ids, shape ``(nx, ny, nz)`` on axes L, P, S, spacing in mm.
    table : dict
        A :func:`ctbmd.simulate.physics.material_table` result (``mu`` by material id and
        ``mu_water``); the phantom's own tissues at 70 keV.

    Returns
    -------
    float
        ``mean_k 2 sqrt(A_w,k / pi)`` in cm, with ``A_w`` the sum of ``mu / mu_water`` times the pixel
        area over up to 40 slices of T11-L5 (on a chest phantom, where few of them are in view, over every
        slice holding vertebral bone).
    """
    levels = [VERSE_LABELS[lv] for lv in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")]
    zs = np.nonzero(np.isin(canvas.level, levels).any(axis=(0, 1)))[0]
    if zs.size < 5:
        zs = np.nonzero((canvas.level > 0).any(axis=(0, 1)))[0]
    zs = zs[:: max(1, zs.size // 40)]
    ratio = (table["mu"] / table["mu_water"]).astype(np.float32)
    area_cm2 = float(canvas.spacing[0] * canvas.spacing[1]) / 100.0
    aw = np.array([ratio[canvas.mat[:, :, k]].sum() * area_cm2 for k in zs])
    return float(np.mean(2.0 * np.sqrt(aw / np.pi)))


class RenderedImage(NamedTuple):
    """The CT image of a phantom (:func:`render_image`).

    Attributes
    ----------
    hu : numpy.ndarray
        int16 ``(nx, ny, nz)`` HU volume, axes L, P, S.
    grid : Grid
        Its geometry (LPS mm, identity direction).
    picks : numpy.ndarray
        Indices of the canvas's fine slices it samples (for the label map).
    """

    hu: np.ndarray
    grid: Grid
    picks: np.ndarray


def render_image(canvas, anat, spec: PhantomSpec, table: dict, scan: dict) -> RenderedImage:
    """Materials -> attenuation -> cupping -> HU -> PSF, slice profile, sampling, noise.

    Parameters
    ----------
    canvas : ctbmd.simulate.anatomy.Canvas
        The painted phantom on a fine grid (slices of at most 1 mm).
    anat : ctbmd.simulate.anatomy.Anatomy
        Its anatomy (width and depth set the cupping; ``z_min`` the first slice).
    spec : PhantomSpec
        Slice thickness and spacing, PSF, noise and seed (the noise draws from
        ``default_rng([seed, 7])``).
    table : dict
        :func:`ctbmd.simulate.physics.material_table` at the scan's energy.
    scan : dict
        ``cupping_fraction``.

    Returns
    -------
    RenderedImage
    """
    nx, ny, nz_fine = canvas.mat.shape
    px, dz = float(canvas.spacing[0]), float(canvas.spacing[2])
    origin = [float(o) for o in canvas.origin]
    thick = float(spec.slice_thickness_mm)
    spacing_z = float(spec.slice_spacing_mm or thick)
    n_sub = int(np.ceil(thick / 1.0 - 1e-6))
    mu = table["mu"][canvas.mat]
    if scan["cupping_fraction"] > 0:
        X = (origin[0] + px * np.arange(nx))[:, None]
        Y = (origin[1] + px * np.arange(ny))[None, :]
        r2 = (X / (anat.width / 2.0)) ** 2 + (Y / (anat.depth / 2.0)) ** 2
        mu *= (1.0 - scan["cupping_fraction"] * np.clip(1.0 - r2, 0.0, None))[:, :, None].astype(np.float32)
    hu = 1000.0 * (mu - table["mu_water"]) / (table["mu_water"] - table["mu_air"])
    del mu
    sigma_px = spec.psf_fwhm_mm / 2.3548 / px
    if sigma_px > 0.05:
        hu = ndi.gaussian_filter(hu, sigma=(sigma_px, sigma_px, 0), mode="nearest")
    if n_sub > 1:
        hu = ndi.uniform_filter1d(hu, size=n_sub, axis=2, mode="nearest")
    step = max(1, int(round(spacing_z / dz)))
    first = (n_sub - 1) // 2
    picks = np.arange(first, nz_fine - n_sub // 2, step)
    hu = hu[:, :, picks]
    noise_rng = np.random.default_rng([spec.seed, 7])
    if spec.noise_hu > 0:
        hu += noise_rng.normal(0.0, spec.noise_hu, size=hu.shape).astype(np.float32)
    hu_i16 = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    # slice centre = centre of its box profile (scipy's even-size box covers p - n/2 ... p + n/2 - 1)
    z_first = anat.z_min + dz * (picks[0] - (0.0 if n_sub % 2 else 0.5))
    grid = Grid(size=hu_i16.shape, spacing_mm=(px, px, step * dz), origin_lps_mm=(origin[0], origin[1], z_first),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return RenderedImage(hu_i16, grid, picks)
