"""Known-truth digital CT phantoms of the thoracolumbar spine (``ctbmd simulate``).

A phantom is built in three steps:

1. **Anatomy** (:mod:`ctbmd.simulate.anatomy`): a torso with vertebrae T10-L5
   (optionally L6), discs, canal, ribs, sacrum, ilium, muscles, fat, aorta,
   cava, lungs and bowel gas, as a material-label volume on a fine grid.
   ``fov="chest"`` draws a chest CT instead (:mod:`ctbmd.simulate.thorax`,
   :mod:`ctbmd.simulate.chest_wall`): C6-L2 with thoracic kyphosis, 12 rib
   pairs with costal cartilage, sternum, clavicles, scapulae, humeral heads,
   lungs, heart, aorta with its arch, airway and upper abdominal organs.
   Variants (:mod:`ctbmd.simulate.variants`): 11 or 13 rib pairs, a
   lumbarised S1 or sacralised L5 with a segmented sacrum, hypoplastic T12
   ribs and an aortic stent graft. Vertebral compression fractures (wedge, biconcave,
   crush) of a set height loss: :func:`ctbmd.simulate.anatomy.fracture_endplates`.
2. **Physics** (:mod:`ctbmd.simulate.physics`): each material's linear
   attenuation at the scan's effective energy, from ICRU-44 compositions and
   xraydb. Trabecular bone is K2HPO4 (mg/cm^3, set per level) in a marrow of
   water and fat with a settable fat fraction. The effective energy depends on
   kVp and grows with body size (beam hardening), and a size-dependent cupping
   lowers central attenuation. Contrast adds iodine to blood, organs, muscle and
   marrow.
3. **Imaging**: an in-plane Gaussian point-spread function, a box slice profile
   of the slice thickness, sampling at the slice spacing, white Gaussian noise
   of a set SD, clipping to the 12-bit HU range.

The truth saved beside the image holds, per level, the K2HPO4 concentration
set (``bmd_mg_cm3``) and the **QCT-equivalent** value: what an ideal
synchronous QCT calibration (K2HPO4 solution rods at the same effective
energy, Cann & Genant, JCAT 1980) reads in that trabecular material without
noise, contrast or artefacts. The two differ by the marrow-fat effect, the
known error source of single-energy QCT (Glüer & Genant, JCAT 1989;13:1023);
``ctbmd run`` reports QCT-equivalent BMD, so that is the truth its accuracy is
judged against, and the difference is reported separately.

The code lives in :mod:`ctbmd.simulate.spec` (settings), :mod:`ctbmd.simulate.paint`
(painting each field of view), :mod:`ctbmd.simulate.imaging`, :mod:`ctbmd.simulate.truth`
and :mod:`ctbmd.simulate.output` (writing); this module runs them in order.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from ctbmd.simulate import anatomy as an
from ctbmd.simulate import thorax, variants
from ctbmd.simulate.imaging import phantom_dw_cm, render_image
from ctbmd.simulate.output import write_phantom
from ctbmd.simulate.paint import paint_abdomen, paint_chest
from ctbmd.simulate.physics import (cupping_fraction, effective_energy_kev, material_table,
                                   scanner_energy_offset_kev, stent_attenuation)
from ctbmd.simulate.spec import (CHEST_LEVELS, DEFAULT_BMD_MG_CM3, FOVS, FRACTURE_LOSS_RANGE, KVP_CHOICES,
                                 PHANTOM_LEVELS, PHASES, RIB_PAIRS, SACRUM_LABEL, SACRUM_STYLES, TISSUE_MODELS,
                                 TRANSITIONS, VARIANT_STREAM, Phantom, PhantomSpec, cohort_specs, parse_bmd,
                                 parse_fractures)
from ctbmd.simulate.truth import add_variant_truth, phantom_truth

__all__ = ["CHEST_LEVELS", "DEFAULT_BMD_MG_CM3", "FOVS", "FRACTURE_LOSS_RANGE", "KVP_CHOICES", "PHANTOM_LEVELS",
           "PHASES", "RIB_PAIRS", "SACRUM_LABEL", "SACRUM_STYLES", "TISSUE_MODELS", "TRANSITIONS", "VARIANT_STREAM",
           "Phantom", "PhantomSpec", "cohort_specs", "parse_bmd", "parse_fractures", "phantom_dw_cm",
           "shift_trabecular_hu", "simulate_phantom", "write_phantom"]


def _level_bmd(spec: PhantomSpec, rng: np.random.Generator) -> dict[str, float]:
    given = {k: float(v) for k, v in spec.bmd_mg_cm3.items()}
    base = float(np.mean(list(given.values()))) if given else DEFAULT_BMD_MG_CM3
    out = {}
    for lv in spec.levels():
        factor = float(rng.uniform(0.95, 1.05))
        out[lv] = given.get(lv, round(base * factor, 2))
    return out


def simulate_phantom(spec: PhantomSpec) -> Phantom:
    """Build the phantom described by ``spec``.

    Returns
    -------
    Phantom
        ``truth`` holds ``settings`` (the spec), ``scan`` (effective energy,
        cupping, body size, iodine), ``levels`` (every vertebra drawn, top to
        bottom: ``level``, ``verse_label``, ``bmd_mg_cm3`` set,
        ``qct_equivalent_mg_cm3``, the noise-free trabecular HU with and without
        contrast, ``body_centre_lps_mm``, ``label_centroid_lps_mm``,
        ``body_height_mm``, ``ribs``, ``rib_length_mm`` (bony length from the
        head, None without ribs), ``metal``, ``in_view``, ``cut_by_edge``,
        ``fracture``: None, or ``kind``, ``height_loss``, the Genant grade it
        implies and the drawn ``anterior_height_mm``, ``middle_height_mm``,
        ``posterior_height_mm``),
        ``discs`` (``above``, ``below``, ``centre_lps_mm``, ``height_mm``,
        ``kind``: normal, remnant or absent for a sacralised L5's disc,
        sacral_remnant inside the segmented sacrum), ``variant`` (``fov``,
        ``rib_pairs``, ``rib_levels``, ``transition``, ``sacralised_sides``,
        ``sacrum``, ``stent``, ``stent_graft`` (None, or metal, wire, rings,
        radius, length, ``proximal_lps_mm``, ``distal_lps_mm``,
        ``centre_line_lps_mm``), ``t12_rib_length_mm``) and ``patient``
        (L1-L2 means and their ACR categories).

    Raises
    ------
    UsageError
        Invalid settings (see :meth:`PhantomSpec.validate`).
    """
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    vrng = np.random.default_rng([spec.seed, VARIANT_STREAM])
    levels = spec.levels()
    bmd = _level_bmd(spec, rng)
    ribs_on = spec.rib_levels()
    chest = spec.fov == "chest"
    transition = spec.drawn_transition()
    sacral_disc = None
    if chest:
        anat = thorax.draw_chest_anatomy(rng, levels, spec.body_width_mm, ribs_on)
    else:
        if transition == "sacralised_l5":
            sacral_disc = variants.SACRALISED_DISC_MM if vrng.uniform() > 0.35 else 0.0
        anat = an.draw_anatomy(rng, levels, spec.body_width_mm, ribs_on,
                               disc_below_mm=None if sacral_disc is None else {"L5": sacral_disc})
    if spec.fractures:
        anat.vertebrae = [replace(vb, fracture=_fracture_of(spec, vb.level)) for vb in anat.vertebrae]
    # The tissue draws come from ``rng`` here, as they always have (the anatomy painted next keeps its
    # draws); the table is made again once the painted phantom gives the patient's size.
    rng_table = copy.deepcopy(rng)
    provisional, _ = material_table(70.0, spec, bmd, levels, rng)

    thick = float(spec.slice_thickness_mm)
    dz = thick / int(np.ceil(thick / 1.0 - 1e-6))  # fine slices of at most 1 mm inside each slice
    px = float(spec.pixel_mm)
    half_x = anat.width / 2.0 + 25.0
    half_y = anat.depth / 2.0 + 25.0
    nx, ny = int(np.ceil(2 * half_x / px)), int(np.ceil(2 * half_y / px))
    nz_fine = int(np.ceil((anat.z_max - anat.z_min) / dz)) + 1
    origin = (-(nx - 1) * px / 2.0, -(ny - 1) * px / 2.0, anat.z_min)
    canvas = an.Canvas((nx, ny, nz_fine), origin, (px, px, dz), spec.rotation_deg)
    shell = an.shell_thickness_mm(px)

    if chest:
        drawn = paint_chest(canvas, anat, spec, rng, vrng, shell)
    else:
        drawn = paint_abdomen(canvas, anat, spec, rng, vrng, shell, sacral_disc)
    dw_cm = phantom_dw_cm(canvas, provisional) if spec.beam_hardening else 30.0
    offset = scanner_energy_offset_kev(spec, dw_cm)
    energy = effective_energy_kev(spec.kvp, dw_cm, offset)
    table, scan = material_table(energy, spec, bmd, levels, rng_table)
    scan["cupping_fraction"] = round(cupping_fraction(anat.width), 5) if spec.beam_hardening else 0.0
    scan["water_equivalent_diameter_cm"] = round(dw_cm, 2)
    scan["energy_offset_kev"] = round(offset, 3)
    stent = drawn.get("stent")
    if stent is not None:
        table["mu"][an.STENT_WIRE], table["mu"][an.STENT_GRAFT] = stent_attenuation(
            energy, stent["wire_fill"], stent["graft_fill"], float(table["mu"][an.AORTA]))

    hu_i16, grid, picks = render_image(canvas, anat, spec, table, scan)
    labels = canvas.level[:, :, picks].copy()
    truth = phantom_truth(spec, anat, canvas, labels, grid, bmd, table, scan, energy)
    add_variant_truth(truth, spec, anat, canvas, grid, drawn)
    return Phantom(hu=hu_i16, grid=grid, labels=labels, truth=truth)


def _fracture_of(spec: PhantomSpec, level: str) -> tuple[str, float] | None:
    item = spec.fractures.get(level)
    return None if item is None else (str(item[0]), float(item[1]))


def shift_trabecular_hu(hu: np.ndarray, bodies: np.ndarray, spacing_mm: tuple[float, float, float],
                        delta_hu: float, cortex_mm: float = 2.0) -> np.ndarray:
    """Add ``delta_hu`` to the trabecular bone of given vertebral bodies in a real CT.

    The known-change check of a real scan: the cortex (the outer ``cortex_mm``
    of each body) and everything outside the bodies keep their HU.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(nx, ny, nz)`` HU volume.
    bodies : numpy.ndarray
        Boolean ``(nx, ny, nz)`` mask of the vertebral bodies to change (no arch).
    spacing_mm : tuple of float
        Voxel size (mm).
    delta_hu : float
        HU added inside.
    cortex_mm : float
        Shell left unchanged, mm.

    Returns
    -------
    numpy.ndarray
        A float32 copy of ``hu`` with the shift applied.
    """
    inner = ndi.distance_transform_edt(np.pad(bodies, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1] > cortex_mm
    out = hu.astype(np.float32, copy=True)
    out[inner] += np.float32(delta_hu)
    return out
