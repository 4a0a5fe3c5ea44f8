"""A simulated K2HPO4 rod phantom under a simulated patient (synchronous QCT calibration).

:func:`add_rod_phantom` extends a :class:`~ctbmd.simulate.Phantom` posteriorly
(LPS +y; the image's j axis grows) with a block of water-equivalent plastic,
separated from the patient's back by an air gap, that holds a left-right row
of K2HPO4 solution rods running along z, like a Mindways QCT phantom lying on
the table under the patient.

Physics, at the phantom's effective energy ``E`` (keV): a rod of ``K`` mg/cm^3
K2HPO4 with water ``W`` mg/cm^3 has

``mu = K 1e-3 (mu/rho)_K2HPO4 + W 1e-3 (mu/rho)_water`` (1/cm),

with ``W = 999.6 - 0.2174 K`` for a QCT-Pro-equivalent rod (no certificate
water; QCT PRO User Guide v5.0), and HU from
:func:`ctbmd.materials.hu_from_mu`. So, noise-free, the rods' HU lie exactly on
``qct_pro_line(E)``. The block is water at a set density (1.0 g/cm^3: 0 HU).
Partial volume at the edges is computed by 4 x 4 supersampling of each pixel;
the phantom's in-plane Gaussian PSF and white Gaussian noise (its
``noise_hu``, drawn from ``default_rng([seed, 31])``) are applied to the added
region; the slice profile does nothing to objects uniform along z.

The air gap (default 5 mm) keeps ctbmd's body outline (largest region above
-400 HU after an opening) from joining the block to the patient.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ctbmd.calibrate.rod_spec import DEFAULT_ROD_SPEC, RodSpec
from ctbmd.errors import UsageError
from ctbmd.materials import hu_from_mu, linear_attenuation, mass_attenuation, qct_pro_line
from ctbmd.simulate.spec import Phantom

#: Second seed word of the noise drawn for the rod phantom's region.
ROD_NOISE_STREAM = 31
#: Body threshold (HU) used to find the patient's back.
_BODY_HU = -500.0


def rod_hu(k2hpo4_mg_cm3: float, water_mg_cm3: float | None, energy_kev: float) -> float:
    """Noise-free HU of a K2HPO4 solution rod at ``energy_kev``.

    Parameters
    ----------
    k2hpo4_mg_cm3 : float
        K2HPO4, mg/cm^3.
    water_mg_cm3 : float or None
        Water, mg/cm^3; None: the QCT Pro equivalent ``999.6 - 0.2174 K``.
    energy_kev : float
        Effective energy, keV.

    Returns
    -------
    float
        HU (relative to water and air at ``energy_kev``).
    """
    w = 999.6 - 0.2174 * k2hpo4_mg_cm3 if water_mg_cm3 is None else float(water_mg_cm3)
    mu = (k2hpo4_mg_cm3 * 1e-3 * mass_attenuation("k2hpo4", energy_kev)
          + w * 1e-3 * mass_attenuation("water", energy_kev))
    return float(hu_from_mu(mu, energy_kev))


def _coverage(x: np.ndarray, y: np.ndarray, px: float, inside, n_sub: int = 4) -> np.ndarray:
    """Fraction (0-1) of each pixel (centres x[:, None], y[None, :], size px) for which ``inside(X, Y)`` holds."""
    off = (np.arange(n_sub) + 0.5) / n_sub * px - px / 2.0
    acc = np.zeros((len(x), len(y)))
    for ox in off:
        for oy in off:
            acc += inside((x + ox)[:, None], (y + oy)[None, :])
    return acc / n_sub ** 2


def add_rod_phantom(phantom: Phantom, spec: RodSpec | None = None, energy_kev: float | None = None, *,
                    spacing_mm: float = 40.0, gap_mm: float = 5.0, block_height_mm: float = 50.0,
                    block_density_g_cm3: float = 1.0, margin_mm: float = 15.0) -> Phantom:
    """Put a K2HPO4 rod phantom under the patient of a simulated CT.

    Parameters
    ----------
    phantom : Phantom
        From :func:`ctbmd.simulate.simulate_phantom` (identity direction).
    spec : RodSpec, optional
        The rods, in order of increasing LPS x; default
        :data:`ctbmd.calibrate.rods.DEFAULT_ROD_SPEC` (K = 0, 50, 100, 150, 200
        mg/cm^3 QCT-Pro-equivalent solutions, 20 mm). With
        ``spec.centres_lps_mm`` the rods' x positions are taken from it (their
        y is the block's mid-height).
    energy_kev : float, optional
        Effective energy (keV); default the phantom's
        ``truth["scan"]["effective_energy_kev"]``.
    spacing_mm : float
        Centre-to-centre rod spacing (mm).
    gap_mm : float
        Air between the patient's back and the block (mm), 2-20.
    block_height_mm : float
        Anterior-posterior size of the block (mm); the rods sit at its mid-height.
    block_density_g_cm3 : float
        Density of the block's water-equivalent plastic (water composition), g/cm^3.
    margin_mm : float
        Air behind the block (mm).

    Returns
    -------
    Phantom
        A new phantom: the image extended along +y (posterior) with the block
        and rods, labels padded with 0, the grid's origin unchanged, and
        ``truth["rod_phantom"]`` holding the rods (``k2hpo4_mg_cm3``,
        ``water_mg_cm3``, ``water_used_mg_cm3``, ``centre_lps_mm`` (x, y),
        ``hu_expected``), the block, the energy and the ideal line
        ``qct_pro_line`` (``sigma_ct``, ``beta_ct``).

    Raises
    ------
    UsageError
        (exit 2) Settings out of range, or the rods do not fit in the image's width.
    """
    spec = DEFAULT_ROD_SPEC if spec is None else spec
    _check_settings(phantom, spec, spacing_mm, gap_mm, block_height_mm)
    energy = float(phantom.truth["scan"]["effective_energy_kev"] if energy_kev is None else energy_kev)
    settings = phantom.truth.get("settings", {})
    noise = float(settings.get("noise_hu", 0.0))
    psf = float(settings.get("psf_fwhm_mm", 0.0))
    seed = int(settings.get("seed", 0))

    lay = _layout(phantom, spec, spacing_mm, gap_mm, block_height_mm, margin_mm)
    nx, ny, nz = phantom.hu.shape
    sx, sy, _ = (float(v) for v in phantom.grid.spacing_mm)
    oy = float(phantom.grid.origin_lps_mm[1])
    y = oy + sy * np.arange(lay.j_start, lay.ny_new)
    picture, hu_block, rods_truth = _picture(lay, spec, y, sx, energy, block_density_g_cm3, psf)

    out = np.empty((nx, lay.ny_new, nz), np.int16)
    out[:, :ny] = phantom.hu
    region = np.repeat(picture[:, :, None], nz, axis=2).astype(np.float32)
    if noise > 0:
        rng = np.random.default_rng([seed, ROD_NOISE_STREAM])
        region += rng.normal(0.0, noise, size=region.shape).astype(np.float32)
    out[:, lay.j_start:] = np.clip(np.round(region), -1024, 3071).astype(np.int16)

    labels = np.zeros((nx, lay.ny_new, nz), phantom.labels.dtype)
    labels[:, :ny] = phantom.labels
    grid = replace(phantom.grid, size=(nx, lay.ny_new, nz))  # same origin: rows were added at the posterior end
    truth = copy.deepcopy(phantom.truth)
    sigma_ct, beta_ct = qct_pro_line(energy)
    truth["rod_phantom"] = {
        "rods": rods_truth,
        "rod_order": "increasing LPS x",
        "diameter_mm": spec.diameter_mm,
        "spacing_mm": None if spec.centres_lps_mm is not None else spacing_mm,
        "spec": spec.to_text(),
        "block": {"material": "water", "density_g_cm3": block_density_g_cm3, "hu": round(hu_block, 4),
                  "x_range_mm": [round(v, 3) for v in lay.block_x], "y_range_mm": [round(v, 3) for v in lay.block_y]},
        "gap_mm": gap_mm,
        "effective_energy_kev": energy,
        "qct_pro_line": {"sigma_ct": round(float(sigma_ct), 6), "beta_ct": round(float(beta_ct), 6)},
        "noise_hu": noise, "psf_fwhm_mm": psf, "noise_seed": [seed, ROD_NOISE_STREAM],
    }
    return Phantom(hu=out, grid=grid, labels=labels, truth=truth)


def _check_settings(phantom: Phantom, spec: RodSpec, spacing_mm: float, gap_mm: float,
                    block_height_mm: float) -> None:
    """Refuse settings out of range and a phantom whose direction is not the identity (UsageError)."""
    if not 2.0 <= gap_mm <= 20.0:
        raise UsageError("rod phantom gap must be 2-20 mm")
    if block_height_mm < spec.diameter_mm + 10.0:
        raise UsageError(f"rod phantom block must be at least the rod diameter + 10 mm tall, not {block_height_mm:g}")
    if spacing_mm < spec.diameter_mm + 2.0:
        raise UsageError("rod spacing must exceed the rod diameter by 2 mm")
    d = phantom.grid.direction
    if not np.allclose(np.asarray(d, float).reshape(3, 3), np.eye(3)):
        raise UsageError("add_rod_phantom needs a phantom with identity direction")


class _Layout(NamedTuple):
    """Where the block and rods go (LPS mm) and the image rows they take."""

    x: np.ndarray                       # LPS x (mm) of the image's columns
    rod_x: np.ndarray                   # rod centres' x (mm)
    rod_y: float                        # rod centres' y (mm): the block's mid-height
    radius: float                       # rod radius (mm)
    block_x: tuple[float, float]
    block_y: tuple[float, float]
    ny_new: int                         # rows of the extended image
    j_start: int                        # first row rewritten (the middle of the air gap)


def _layout(phantom: Phantom, spec: RodSpec, spacing_mm: float, gap_mm: float, block_height_mm: float,
            margin_mm: float) -> _Layout:
    """Place the block behind the patient's back, centred on the patient in x, and the rods at its mid-height."""
    hu = phantom.hu
    nx, ny, nz = hu.shape
    sx, sy, _ = (float(v) for v in phantom.grid.spacing_mm)
    ox, oy, _ = (float(v) for v in phantom.grid.origin_lps_mm)
    x = ox + sx * np.arange(nx)

    body_rows = np.nonzero((hu > _BODY_HU).any(axis=(0, 2)))[0]
    body_cols = np.nonzero((hu > _BODY_HU).any(axis=(1, 2)))[0]
    if len(body_rows) == 0:
        raise UsageError("the phantom holds no patient to put the rod phantom under")
    y_back = oy + sy * (body_rows[-1] + 0.5)
    x_mid = ox + sx * 0.5 * (body_cols[0] + body_cols[-1])

    n = len(spec.rods)
    if spec.centres_lps_mm is not None:
        rod_x = np.array([c[0] for c in spec.centres_lps_mm], float)
    else:
        rod_x = x_mid + (np.arange(n) - (n - 1) / 2.0) * spacing_mm
    r = spec.diameter_mm / 2.0
    block_x = (float(rod_x.min()) - r - 20.0, float(rod_x.max()) + r + 20.0)
    if block_x[0] < x[0] + 5.0 or block_x[1] > x[-1] - 5.0:
        raise UsageError(f"the rod phantom ({block_x[1] - block_x[0]:.0f} mm wide) does not fit in the image "
                         f"({x[-1] - x[0]:.0f} mm wide)")
    block_y = (float(y_back + gap_mm), float(y_back + gap_mm + block_height_mm))
    rod_y = 0.5 * (block_y[0] + block_y[1])
    ny_new = max(ny, int(math.ceil((block_y[1] + margin_mm - oy) / sy)) + 1)
    j_start = int(math.ceil((y_back + gap_mm / 2.0 - oy) / sy))
    return _Layout(x, rod_x, rod_y, r, block_x, block_y, ny_new, j_start)


def _picture(lay: _Layout, spec: RodSpec, y: np.ndarray, sx: float, energy: float, block_density_g_cm3: float,
             psf: float) -> tuple[np.ndarray, float, list[dict]]:
    """Noise-free HU of the rewritten rows (partial-volume block and rods, blurred by the PSF), the block's HU
    and the rods' truth."""
    x, rod_y, r, block_x, block_y = lay.x, lay.rod_y, lay.radius, lay.block_x, lay.block_y
    f_block = _coverage(x, y, sx, lambda X, Y: (X >= block_x[0]) & (X <= block_x[1])
                        & (Y >= block_y[0]) & (Y <= block_y[1]))
    mu_block = float(linear_attenuation("water", energy, block_density_g_cm3))
    hu_block = float(hu_from_mu(mu_block, energy))
    picture = -1000.0 * (1.0 - f_block) + hu_block * f_block
    rods_truth = []
    for rod, cx in zip(spec.rods, lay.rod_x):
        f_rod = _coverage(x, y, sx, lambda X, Y, cx=cx: (X - cx) ** 2 + (Y - rod_y) ** 2 <= r * r)
        h = rod_hu(rod.k2hpo4_mg_cm3, rod.water_mg_cm3, energy)
        picture += (h - hu_block) * f_rod
        rods_truth.append({"k2hpo4_mg_cm3": rod.k2hpo4_mg_cm3, "water_mg_cm3": rod.water_mg_cm3,
                           "water_used_mg_cm3": round(rod.water_used_mg_cm3, 4),
                           "centre_lps_mm": [round(float(cx), 3), round(float(rod_y), 3)],
                           "hu_expected": round(h, 4)})
    sigma_px = psf / 2.3548 / sx
    if sigma_px > 0.05:
        picture = ndi.gaussian_filter(picture, sigma=sigma_px, mode="nearest")
    return picture, hu_block, rods_truth
