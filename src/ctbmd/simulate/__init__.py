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
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ctbmd.errors import UsageError
from ctbmd.simulate import anatomy as an
from ctbmd.simulate import chest_wall, thorax, variants
from ctbmd.simulate.physics import (cupping_fraction, effective_energy_kev, material_table,
                                   scanner_energy_offset_kev, stent_attenuation)
from ctbmd.types import VERSE_LABELS, Grid

#: Levels an abdomen phantom can hold, top to bottom (T13 sits between T12 and L1 with 13 rib pairs).
PHANTOM_LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "L6")
#: Levels of a chest phantom with 12 rib pairs, top to bottom.
CHEST_LEVELS = thorax.CHEST_LEVELS
FOVS = ("abdomen", "chest")
RIB_PAIRS = (11, 12, 13)
TRANSITIONS = ("none", "lumbarised_s1", "sacralised_l5")
SACRUM_STYLES = ("simple", "segmented")
#: Second seed word of the generator that draws the variants (``default_rng([seed, 11])``).
VARIANT_STREAM = 11
#: VerSe label of the sacrum in the truth label map (VerSe numbering: 26 = sacrum).
SACRUM_LABEL = 26
KVP_CHOICES = (80, 100, 120, 140)
PHASES = ("native", "arterial", "portal_venous")
TISSUE_MODELS = ("realistic", "icru44")
DEFAULT_BMD_MG_CM3 = 150.0
#: Height loss (fraction) a phantom's fracture may take: 5% to 80%.
FRACTURE_LOSS_RANGE = (0.05, 0.8)


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines one phantom; the same spec and seed give the same volume.

    Attributes
    ----------
    bmd_mg_cm3 : dict
        Level name -> K2HPO4 concentration (mg/cm^3) of its trabecular bone. Levels
        not given take the mean of those given (``DEFAULT_BMD_MG_CM3`` when none)
        times a seeded factor of 0.95-1.05.
    kvp : int
        Tube voltage, one of 80, 100, 120, 140 kV.
    noise_hu : float
        SD of the added white Gaussian noise, HU.
    slice_thickness_mm, slice_spacing_mm : float
        Box slice profile width and the distance between slices (mm); spacing
        defaults to the thickness.
    pixel_mm : float
        In-plane pixel size (mm).
    psf_fwhm_mm : float
        In-plane Gaussian point-spread function FWHM (mm).
    marrow_fat_fraction : float
        Volume fraction of fat in the marrow (0-1), the rest water.
    body_width_mm : float or None
        Left-right torso width (mm); seeded 280-400 mm when None.
    phase : str
        ``native``, ``arterial`` or ``portal_venous``.
    rotation_deg : float
        Patient rotation about the scanner z axis (degrees).
    t12_ribs : bool
        False drops the ribs of T12 (then T11 is the lowest rib-bearing vertebra); the same as
        ``rib_pairs=11``.
    l6 : bool
        Add a sixth lumbar vertebra: the same as ``transition="lumbarised_s1"``.
    metal_level : str or None
        Level given two titanium pedicle screws.
    beam_hardening : bool
        Size-dependent effective energy and cupping.
    tissue_spread : float
        With ``tissue_model="icru44"``: inter-patient SD of fat and muscle density, as a
        fraction (0.005 = 0.5%); 0 gives exact ICRU-44 tissues.
    tissue_model : str
        ``realistic`` (fat composition, muscle with age, blood with haemoglobin drawn from
        published ranges; :mod:`ctbmd.simulate.physics`) or ``icru44``.
    energy_offset_kev : float or None
        The scanner's offset (keV) from the spectrum model's effective energy; None draws it
        from the model's spread (seeded). Give one value to several phantoms to model one scanner.
    seed : int
        Seed of the anatomy, the BMD factors and the noise.
    fov : str
        ``abdomen`` (T10-L5 and the sacrum) or ``chest`` (C6 at the top edge to part of L2, no pelvis).
    rib_pairs : int
        11 (no ribs on T12), 12, or 13 (a T13, VerSe 28, with short floating ribs, between T12 and L1).
    transition : str
        ``none``, ``lumbarised_s1`` (a mobile L6, VerSe 25, with a disc below, the sacrum one segment
        lower) or ``sacralised_l5`` (L5 fused with the sacrum by ala-like transverse processes, on one
        or both sides, and a disc that is absent or a thin sliver). Abdomen only.
    sacrum : str or None
        ``segmented`` (the default: fused S1-S5 bodies with disc remnants, sacral canal, alae, SI
        joints and ilia) or ``simple`` (the block sacrum, without canal or endplates, that phantoms
        had before the labeller was checked on real sacra); None chooses ``segmented``.
    stent : bool
        An aortic stent graft: the distal arch and descending aorta (chest) or the infrarenal aorta
        above the bifurcation (abdomen).
    t12_rib_length_mm : float or None
        Hypoplastic T12 ribs: their bony length from the head (mm), e.g. 15-40.
    fractures : dict
        Level name -> ``(kind, loss)``: a vertebral compression fracture of that level, ``kind``
        one of ``wedge`` (anterior height lost against the posterior), ``biconcave`` (middle
        height lost) or ``crush`` (every height lost), ``loss`` the fraction of the height lost
        (0.05-0.8; Genant grade 1 from 0.20, 2 from 0.25, 3 from 0.40). E.g.
        ``{"L1": ("wedge", 0.30)}``. See :func:`ctbmd.simulate.anatomy.fracture_endplates`;
        no random draw depends on it.

    Random draws of the variants come from ``np.random.default_rng([seed, 11])``; with the default
    options a phantom is the same as before these options existed.
    """

    bmd_mg_cm3: dict = field(default_factory=dict)
    kvp: int = 120
    noise_hu: float = 10.0
    slice_thickness_mm: float = 2.0
    slice_spacing_mm: float | None = None
    pixel_mm: float = 1.0
    psf_fwhm_mm: float = 1.0
    marrow_fat_fraction: float = 0.4
    body_width_mm: float | None = None
    phase: str = "native"
    rotation_deg: float = 0.0
    t12_ribs: bool = True
    l6: bool = False
    metal_level: str | None = None
    beam_hardening: bool = True
    tissue_spread: float = 0.005
    tissue_model: str = "realistic"
    energy_offset_kev: float | None = None
    seed: int = 0
    fov: str = "abdomen"
    rib_pairs: int = 12
    transition: str = "none"
    sacrum: str | None = None
    stent: bool = False
    t12_rib_length_mm: float | None = None
    fractures: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`~ctbmd.errors.UsageError` for out-of-range settings or clashing variants."""
        self._validate_variant()
        levels = self.levels()
        bad = [k for k in self.bmd_mg_cm3 if k not in levels]
        if bad:
            raise UsageError(f"--bmd names levels the phantom does not have: {', '.join(bad)} "
                             f"(it has {', '.join(levels)})")
        if any(not (0.0 <= float(v) <= 1000.0) for v in self.bmd_mg_cm3.values()):
            raise UsageError("--bmd values must be 0-1000 mg/cm3 K2HPO4")
        if self.kvp not in KVP_CHOICES:
            raise UsageError(f"--kvp must be one of {', '.join(map(str, KVP_CHOICES))}, not {self.kvp}")
        if self.phase not in PHASES:
            raise UsageError(f"--phase must be one of {', '.join(PHASES)}, not {self.phase!r}")
        if not 0.0 <= self.marrow_fat_fraction <= 0.95:
            raise UsageError("--marrow-fat must be between 0 and 0.95")
        if not 0.5 <= self.slice_thickness_mm <= 10.0 or not 0.3 <= self.pixel_mm <= 3.0:
            raise UsageError("slice thickness must be 0.5-10 mm and pixel size 0.3-3 mm")
        if self.body_width_mm is not None and not 200.0 <= self.body_width_mm <= 550.0:
            raise UsageError("--body-width must be 200-550 mm")
        if self.tissue_model not in TISSUE_MODELS:
            raise UsageError(f"--tissue-model must be one of {', '.join(TISSUE_MODELS)}, not {self.tissue_model!r}")
        if self.energy_offset_kev is not None and not -10.0 <= self.energy_offset_kev <= 10.0:
            raise UsageError("--energy-offset must be -10 to 10 keV")
        if not 0.0 <= self.tissue_spread <= 0.05:
            raise UsageError("--tissue-spread must be 0-0.05 (a fraction of density)")
        if self.noise_hu < 0:
            raise UsageError("--noise must be >= 0 HU")
        if self.metal_level is not None and self.metal_level not in levels:
            raise UsageError(f"--metal-level {self.metal_level} is not one of the phantom's levels "
                             f"({', '.join(levels)})")
        self._validate_fractures(levels)

    def _validate_fractures(self, levels: list[str]) -> None:
        for level, item in self.fractures.items():
            if level not in levels:
                raise UsageError(f"--fracture names {level}, which the phantom does not have "
                                 f"(it has {', '.join(levels)})")
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise UsageError(f"--fracture {level}: give (kind, loss), e.g. ('wedge', 0.3), not {item!r}")
            kind, loss = item
            if kind not in an.FRACTURE_KINDS:
                raise UsageError(f"--fracture {level}: the kind must be one of {', '.join(an.FRACTURE_KINDS)}, "
                                 f"not {kind!r}")
            if not FRACTURE_LOSS_RANGE[0] <= float(loss) <= FRACTURE_LOSS_RANGE[1]:
                raise UsageError(f"--fracture {level}: the height loss must be {FRACTURE_LOSS_RANGE[0]:g}-"
                                 f"{FRACTURE_LOSS_RANGE[1]:g} (a fraction: 0.3 = 30%), not {loss}")

    def _validate_variant(self) -> None:
        if self.fov not in FOVS:
            raise UsageError(f"--fov must be one of {', '.join(FOVS)}, not {self.fov!r}")
        if self.rib_pairs not in RIB_PAIRS:
            raise UsageError(f"--rib-pairs must be 11, 12 or 13, not {self.rib_pairs}")
        if not self.t12_ribs and self.rib_pairs == 13:
            raise UsageError("--no-t12-ribs (11 rib pairs) contradicts --rib-pairs 13; give one of them")
        if self.transition not in TRANSITIONS:
            raise UsageError(f"--transition must be one of {', '.join(TRANSITIONS)}, not {self.transition!r}")
        if self.l6 and self.transition == "sacralised_l5":
            raise UsageError("--l6 (a lumbarised S1) contradicts --transition sacralised_l5; give one of them")
        if self.sacrum is not None and self.sacrum not in SACRUM_STYLES:
            raise UsageError(f"--sacrum must be one of {', '.join(SACRUM_STYLES)}, not {self.sacrum!r}")
        if self.fov == "chest" and (self.drawn_transition() != "none" or self.sacrum is not None):
            raise UsageError("--transition, --l6 and --sacrum need --fov abdomen: the chest field of view "
                             "ends at L2 and holds no sacrum")
        if self.drawn_transition() != "none" and self.sacrum == "simple":
            raise UsageError("--transition draws the segmented sacrum; drop --sacrum simple")
        if self.t12_rib_length_mm is not None:
            if self.drawn_rib_pairs() == 11:
                raise UsageError("--t12-rib-length needs ribs on T12: drop --no-t12-ribs / --rib-pairs 11")
            if not 5.0 <= self.t12_rib_length_mm <= 120.0:
                raise UsageError(f"--t12-rib-length must be 5-120 mm, not {self.t12_rib_length_mm:g}")

    def drawn_rib_pairs(self) -> int:
        """Rib pairs drawn: ``rib_pairs``, or 11 when ``t12_ribs`` is False."""
        return 11 if not self.t12_ribs else int(self.rib_pairs)

    def drawn_transition(self) -> str:
        """Lumbosacral transition drawn: ``transition``, or ``lumbarised_s1`` when ``l6`` is set."""
        return "lumbarised_s1" if self.l6 else self.transition

    def drawn_sacrum(self) -> str | None:
        """Sacrum style drawn (None on the chest field of view, which has no sacrum)."""
        if self.fov == "chest":
            return None
        return self.sacrum if self.sacrum is not None else "segmented"

    def levels(self) -> list[str]:
        """Levels of this phantom, top to bottom."""
        t13 = ["T13"] if self.drawn_rib_pairs() == 13 else []
        if self.fov == "chest":
            return [*CHEST_LEVELS[:14], *t13, *CHEST_LEVELS[14:]]
        if not t13:
            return [lv for lv in PHANTOM_LEVELS if lv != "L6" or self.drawn_transition() == "lumbarised_s1"]
        return ["T10", "T11", "T12", "T13"] + [lv for lv in PHANTOM_LEVELS[3:]
                                               if lv != "L6" or self.drawn_transition() == "lumbarised_s1"]

    def rib_levels(self) -> tuple[str, ...]:
        """Levels that carry a pair of ribs (T1/T10 to the lowest rib-bearing vertebra)."""
        return tuple(lv for lv in self.levels() if lv.startswith("T")
                     and not (lv == "T12" and self.drawn_rib_pairs() == 11))


@dataclass(frozen=True)
class Phantom:
    """A simulated CT and its ground truth.

    Attributes
    ----------
    hu : numpy.ndarray
        int16 ``(nx, ny, nz)`` HU volume, axes L, P, S (identity direction).
    grid : Grid
        Geometry of ``hu`` (LPS mm).
    labels : numpy.ndarray
        uint8 ``(nx, ny, nz)`` vertebra labels in VerSe numbering (C6 = 6, C7 = 7,
        T1 = 8 ... T12 = 19, T13 = 28, L1 = 20 ... L5 = 24, L6 = 25, sacrum = 26)
        on the same grid.
    truth : dict
        JSON-ready ground truth (see :func:`simulate_phantom`).
    """

    hu: np.ndarray
    grid: Grid
    labels: np.ndarray
    truth: dict


def parse_bmd(text: str) -> dict[str, float]:
    """Parse ``"L1=95,L2=100"`` into ``{"L1": 95.0, "L2": 100.0}``.

    Raises
    ------
    UsageError
        On a malformed item.
    """
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"([CTL]\d{1,2})\s*=\s*([0-9]+(?:\.[0-9]*)?)", item)
        if not m:
            raise UsageError(f"--bmd item {item!r} is not LEVEL=VALUE (e.g. L1=95)")
        out[m.group(1)] = float(m.group(2))
    return out


def parse_fractures(text: str) -> dict[str, tuple[str, float]]:
    """Parse ``"L1=wedge:0.3,T12=crush:0.25"`` into ``{"L1": ("wedge", 0.3), "T12": ("crush", 0.25)}``.

    Raises
    ------
    UsageError
        On a malformed item (the kinds and ranges are checked by :meth:`PhantomSpec.validate`).
    """
    out: dict[str, tuple[str, float]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"([CTL]\d{1,2})\s*=\s*([a-z]+)\s*:\s*([0-9]*\.?[0-9]+)", item)
        if not m:
            raise UsageError(f"--fracture item {item!r} is not LEVEL=KIND:LOSS (e.g. L1=wedge:0.3)")
        out[m.group(1)] = (m.group(2), float(m.group(3)))
    return out


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
        drawn = _paint_chest(canvas, anat, spec, rng, vrng, shell)
    else:
        drawn = _paint_abdomen(canvas, anat, spec, rng, vrng, shell, sacral_disc)
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

    hu_i16, grid, picks = _image(canvas, anat, spec, table, scan)
    labels = canvas.level[:, :, picks].copy()
    truth = _truth(spec, anat, canvas, labels, grid, bmd, table, scan, energy)
    _add_variant_truth(truth, spec, anat, canvas, grid, drawn)
    return Phantom(hu=hu_i16, grid=grid, labels=labels, truth=truth)


def _fracture_of(spec: PhantomSpec, level: str) -> tuple[str, float] | None:
    item = spec.fractures.get(level)
    return None if item is None else (str(item[0]), float(item[1]))


def _fracture_truth(vb) -> dict | None:
    """The truth of a fractured vertebra: kind, loss, drawn heights (mm) and the Genant grade it implies
    (:data:`ctbmd.roi.GENANT_LOSS`)."""
    if vb.fracture is None:
        return None
    from ctbmd.heights import GENANT_LOSS

    kind, loss = vb.fracture
    heights = vb.fractured_heights()
    grade = sum(loss >= g for g in GENANT_LOSS)
    return {"kind": kind, "height_loss": round(loss, 4), "genant_grade": int(grade),
            **{f"{k}_height_mm": round(v, 2) for k, v in heights.items()}}


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


def _image(canvas, anat, spec: PhantomSpec, table: dict, scan: dict) -> tuple[np.ndarray, Grid, np.ndarray]:
    """Materials -> attenuation -> cupping -> HU -> PSF, slice profile, sampling, noise.

    Returns the int16 ``(nx, ny, nz)`` HU volume, its :class:`~ctbmd.types.Grid` and the indices of
    the fine slices it samples (for the label map).
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
    return hu_i16, grid, picks


def _paint_abdomen(canvas, anat, spec, rng, vrng, shell, sacral_disc) -> dict:
    """Paint the abdomen phantom; the default options take exactly the original steps and draws.

    Returns what the truth needs beyond ``anat``: rib lengths, discs, sacralised sides, stent.
    """
    levels = [vb.level for vb in anat.vertebrae]
    scale = anat.extras["scale"]
    transition = spec.drawn_transition()
    an.paint_torso(canvas, anat, rng)
    reach = {lv: an.TRANSVERSE_REACH[lv] * scale for lv in levels}
    for i, vb in enumerate(anat.vertebrae):
        an.paint_vertebra(canvas, vb, an.TRABECULAR_BASE + i, VERSE_LABELS[vb.level], reach[vb.level], shell)
    discs = []
    for i, vb in enumerate(anat.vertebrae):
        last = i + 1 == len(anat.vertebrae)
        below_top = anat.vertebrae[i + 1].centre[2] + anat.vertebrae[i + 1].height / 2.0 if not last \
            else anat.sacrum_top
        z_top = vb.centre[2] - vb.height / 2.0
        kind = "normal"
        if last and transition == "sacralised_l5":
            kind = "remnant" if sacral_disc else "absent"
        else:
            an.paint_disc(canvas, vb, below_top, anat)
        discs.append({"above": vb.level, "below": "sacrum" if last else anat.vertebrae[i + 1].level,
                      "centre_anat_mm": an.column_frame(anat.column, (z_top + below_top) / 2.0)[0],
                      "height_mm": z_top - below_top, "kind": kind})
    sides: tuple[int, ...] = ()
    if spec.drawn_sacrum() == "simple":
        an.paint_sacrum_and_pelvis(canvas, anat, scale)
    else:
        lumbarised = transition == "lumbarised_s1"
        ala = 0.85 if lumbarised else 1.0
        segs = variants.paint_segmented_sacrum(canvas, anat, scale, first=2 if lumbarised else 1, ala_scale=ala)
        for upper, lower in zip(segs, segs[1:]):
            if upper["remnant_below"] > 0 and upper["name"] in ("S1", "S2"):
                bottom = upper["centre"] - upper["frame"][2] * upper["height"] / 2.0
                discs.append({"above": upper["name"], "below": lower["name"], "centre_anat_mm": bottom
                              - upper["frame"][2] * upper["remnant_below"] / 2.0,
                              "height_mm": upper["remnant_below"], "kind": "sacral_remnant"})
        if transition == "sacralised_l5":
            draw = vrng.uniform()
            sides = (-1, 1) if draw < 0.5 else ((-1,) if draw < 0.75 else (1,))
            variants.paint_sacralised_l5(canvas, anat, an.SACRAL_ALA_REACH_MM * scale * ala, sides,
                                         0.55 if sacral_disc else 0.0)
    rib_len = {}
    for vb in anat.vertebrae:
        if vb.ribs:
            for side in (-1, 1):
                path = an.rib_path(vb, side, reach[vb.level], an.RIB_LENGTH[vb.level] * scale, anat)
                if vb.level == "T12" and spec.t12_rib_length_mm is not None:
                    path = chest_wall.cut_path(path, float(spec.t12_rib_length_mm))
                canvas.stamp_tube(path, 5.0, an.RIB)
                rib_len[vb.level] = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
    if spec.metal_level:
        an.paint_screws(canvas, next(v for v in anat.vertebrae if v.level == spec.metal_level))
    out = {"rib_length_mm": rib_len, "discs": discs, "sacralised_sides": sides}
    if spec.stent:
        z_top = next(v for v in anat.vertebrae if v.level == "L1").centre[2] - 5.0 * scale
        z_bif = next((v.centre[2] for v in anat.vertebrae if v.level == "L4"), anat.z_min)
        z_len = float(vrng.uniform(70.0, 100.0)) * scale
        line = variants.abdominal_aorta_line(anat, z_top, max(z_bif + 6.0, z_top - z_len))
        out["stent"] = variants.paint_stent_graft(canvas, line, vrng)
    return out


def _paint_chest(canvas, anat, spec, rng, vrng, shell) -> dict:
    """Paint the chest phantom: soft tissue, column, discs, ribs, sternum, shoulder girdle, variants."""
    lay = anat.chest
    scale = anat.extras["scale"]
    verts = anat.vertebrae
    thorax.paint_chest_soft_tissue(canvas, anat, rng)
    reach = {vb.level: thorax.transverse_reach(vb.level) * scale for vb in verts}
    for i, vb in enumerate(verts):
        an.paint_vertebra(canvas, vb, an.TRABECULAR_BASE + i, VERSE_LABELS[vb.level], reach[vb.level], shell)
    discs = []
    for upper, lower in zip(verts, verts[1:]):
        centre, gap = an.paint_disc_between(canvas, upper, lower)
        discs.append({"above": upper.level, "below": lower.level, "centre_anat_mm": centre, "height_mm": gap,
                      "kind": "normal"})
    thoracic = [i for i, vb in enumerate(verts) if vb.level.startswith("T")]
    pitch = (lay.z_level["T1"] - lay.z_level["T12"]) / 11.0
    rib_len = {}
    for number, i in enumerate(thoracic, start=1):
        vb = verts[i]
        if not vb.ribs:
            continue
        length = an.RIB_LENGTH.get(f"T{number}") if number >= 11 else None
        length = None if length is None else length * scale
        if vb.level == "T12" and spec.t12_rib_length_mm is not None:
            length = float(spec.t12_rib_length_mm)
        for side in (-1, 1):
            rib = chest_wall.chest_rib(lay, verts, i, number, side, reach[vb.level], pitch, length)
            chest_wall.paint_rib(canvas, rib, number)
            rib_len[vb.level] = rib.length_mm
    chest_wall.paint_sternum(canvas, lay)
    chest_wall.paint_shoulder_girdle(canvas, lay)
    if spec.metal_level:
        an.paint_screws(canvas, next(v for v in verts if v.level == spec.metal_level))
    out = {"rib_length_mm": rib_len, "discs": discs, "sacralised_sides": ()}
    if spec.stent:
        arch, desc = lay.tubes["aortic_arch"], lay.tubes["descending_aorta"]
        start = int(float(vrng.uniform(0.55, 0.75)) * (len(arch) - 1))
        line = np.vstack([arch[start:], desc])
        keep = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(line[:, :3], axis=0), axis=1))] \
            <= float(vrng.uniform(120.0, 200.0)) * scale
        out["stent"] = variants.paint_stent_graft(canvas, line[keep], vrng)
    return out


def _truth(spec, anat, canvas, labels, grid, bmd, table, scan, energy) -> dict:
    from ctbmd.classify import acr_category

    levels_out = []
    for i, vb in enumerate(anat.vertebrae):
        lab = VERSE_LABELS[vb.level]
        idx = np.argwhere(labels == lab)
        centroid = None
        if len(idx):
            centroid = [round(float(c), 2) for c in grid.affine_lps[:3, :3] @ idx.mean(0) + grid.affine_lps[:3, 3]]
        info = table["trabecular"][vb.level]
        centre_world = canvas.world(vb.centre)
        levels_out.append({
            "level": vb.level,
            "verse_label": lab,
            "bmd_mg_cm3": round(bmd[vb.level], 3),
            "qct_equivalent_mg_cm3": round(info["qct_equivalent_mg_cm3"], 3),
            "trabecular_hu_native": round(info["hu_native"], 2),
            "trabecular_hu": round(info["hu"], 2),
            "body_centre_lps_mm": [round(float(c), 2) for c in centre_world],
            "label_centroid_lps_mm": centroid,
            "body_height_mm": round(vb.height, 2),
            "ribs": vb.ribs,
            "metal": spec.metal_level == vb.level,
            "in_view": bool(len(idx)),
            "fracture": _fracture_truth(vb),
        })
    by = {lv["level"]: lv for lv in levels_out}
    patient = {}
    if "L1" in by and "L2" in by:
        qct = (by["L1"]["qct_equivalent_mg_cm3"] + by["L2"]["qct_equivalent_mg_cm3"]) / 2.0
        mineral = (by["L1"]["bmd_mg_cm3"] + by["L2"]["bmd_mg_cm3"]) / 2.0
        patient = {"levels": ["L1", "L2"], "qct_equivalent_mg_cm3": round(qct, 3),
                   "bmd_mg_cm3": round(mineral, 3), "category": acr_category(qct),
                   "category_mineral": acr_category(mineral)}
    settings = asdict(spec)
    return {
        "schema": "ctbmd-phantom-truth 1.0",
        "settings": settings,
        "scan": {"effective_energy_kev": round(energy, 3), **scan,
                 "body_width_mm": round(anat.width, 1), "body_depth_mm": round(anat.depth, 1),
                 "subcutaneous_fat_mm": round(anat.subcut_fat, 1),
                 "anatomy": {k: round(float(v), 3) for k, v in anat.extras.items()}},
        "levels": levels_out,
        "patient": patient,
        "label_numbering": ("VerSe (T10=17, T11=18, T12=19, L1=20 ... L5=24, L6=25, sacrum=26)"
                            if spec.fov == "abdomen" and spec.drawn_rib_pairs() != 13 else
                            "VerSe (C6=6, C7=7, T1=8 ... T12=19, T13=28, L1=20 ... L5=24, L6=25, sacrum=26)"),
        "frame": "LPS mm; image axes (i, j, k) = (L, P, S), identity direction",
    }


def _add_variant_truth(truth: dict, spec: PhantomSpec, anat, canvas, grid: Grid, drawn: dict) -> None:
    """Add the keys that describe the variant (new keys only: the default phantom's values stay)."""
    def lps(p):
        return [round(float(c), 2) for c in canvas.world(np.asarray(p, float))]

    z_lo = grid.origin_lps_mm[2] - grid.spacing_mm[2] / 2.0
    z_hi = z_lo + grid.spacing_mm[2] * grid.size[2]
    by = {vb.level: vb for vb in anat.vertebrae}
    for lv in truth["levels"]:
        vb = by[lv["level"]]
        half = vb.height / 2.0 * abs(float(vb.frame[2][2])) + vb.half_depth * abs(float(vb.frame[1][2]))
        length = drawn["rib_length_mm"].get(lv["level"])
        lv["rib_length_mm"] = None if length is None else round(length, 1)
        lv["cut_by_edge"] = bool(vb.centre[2] + half > z_hi or vb.centre[2] - half < z_lo)
    truth["discs"] = [{"above": d["above"], "below": d["below"], "centre_lps_mm": lps(d["centre_anat_mm"]),
                       "height_mm": round(float(d["height_mm"]), 2), "kind": d["kind"]} for d in drawn["discs"]]
    stent = drawn.get("stent")
    graft = None
    if stent is not None:
        graft = {k: v for k, v in stent.items() if not k.endswith("_anat_mm") and not k.endswith("_fill")}
        graft.update(proximal_lps_mm=lps(stent["proximal_anat_mm"]), distal_lps_mm=lps(stent["distal_anat_mm"]),
                     centre_line_lps_mm=[lps(p) for p in stent["centre_anat_mm"]],
                     wire_volume_fraction=round(float(stent["wire_fill"]), 4))
    sides = drawn["sacralised_sides"]
    truth["variant"] = {
        "fov": spec.fov,
        "rib_pairs": spec.drawn_rib_pairs(),
        "rib_levels": list(spec.rib_levels()),
        "transition": spec.drawn_transition(),
        "sacralised_sides": (None if not sides else "bilateral" if len(sides) == 2
                             else "right" if sides[0] < 0 else "left"),
        "sacrum": spec.drawn_sacrum(),
        "stent": bool(spec.stent),
        "stent_graft": graft,
        "t12_rib_length_mm": spec.t12_rib_length_mm,
    }


def cohort_specs(n: int, seed: int = 0) -> list[PhantomSpec]:
    """``n`` varied abdominal phantoms for cohort-scale tests (``ctbmd batch``, ``ctbmd evaluate``).

    Phantom ``i`` cycles through 80/100/120/140 kV and draws, from
    ``np.random.default_rng([seed, i])``, an L1-L2 BMD of 40-200 mg/cm³
    (K2HPO4; osteoporotic to normal), 8-20 HU of noise and a marrow fat fraction
    of 0.3-0.6; its anatomy seed is ``seed * 1000 + i``. They are coarse (1.5 mm
    pixels, 3 mm slices) so that each takes seconds to make and to analyse.

    Returns
    -------
    list of PhantomSpec
        Pass each to :func:`simulate_phantom`.
    """
    specs = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        bmd = float(rng.uniform(40.0, 200.0))
        specs.append(PhantomSpec(bmd_mg_cm3={"L1": round(bmd, 1), "L2": round(bmd * rng.uniform(0.95, 1.05), 1)},
                                 kvp=(80, 100, 120, 140)[i % 4], noise_hu=round(float(rng.uniform(8.0, 20.0)), 1),
                                 slice_thickness_mm=3.0, pixel_mm=1.5,
                                 marrow_fat_fraction=round(float(rng.uniform(0.3, 0.6)), 2), seed=seed * 1000 + i))
    return specs


def write_phantom(phantom: Phantom, out_dir: str | Path, dicom: bool = False) -> dict[str, Path]:
    """Write ``ct.nii.gz`` (or a ``ct/`` DICOM series), ``labels.nii.gz``, ``truth.json`` and ``reference.csv``.

    ``reference.csv`` is the phantom's truth as a QCT reference table for
    ``ctbmd evaluate``: ``patient_id`` (the output folder's name, which is also
    the DICOM PatientID of a ``--dicom`` phantom), ``level``, ``bmd_mg_cm3``
    (the QCT-equivalent truth) and ``k2hpo4_mg_cm3`` (the K2HPO4 set in the
    marrow). Files are written atomically (temporary name, then rename).

    Returns
    -------
    dict
        Kind -> path written.
    """
    from ctbmd.io import array_to_image, write_atomic, write_image_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    image = array_to_image(phantom.hu, phantom.grid)
    if dicom:
        paths["ct"] = _write_dicom(image, out / "ct", phantom.truth)
    else:
        paths["ct"] = write_image_atomic(image, out / "ct.nii.gz")
    paths["labels"] = write_image_atomic(array_to_image(phantom.labels, phantom.grid), out / "labels.nii.gz")
    text = json.dumps(phantom.truth, indent=1)
    paths["truth"] = write_atomic(out / "truth.json", lambda p: p.write_text(text))
    rows = "".join(f"{out.resolve().name},{lv['level']},{lv['qct_equivalent_mg_cm3']:.3f},{lv['bmd_mg_cm3']:.3f}\n"
                   for lv in phantom.truth["levels"])
    paths["reference"] = write_atomic(out / "reference.csv", lambda p: p.write_text(
        "patient_id,level,bmd_mg_cm3,k2hpo4_mg_cm3\n" + rows))
    return paths


def _write_dicom(image: sitk.Image, folder: Path, truth: dict) -> Path:
    """Write a CT DICOM series (one file per slice) with the tags ``ctbmd run`` reads."""
    import shutil
    import tempfile

    from pydicom.uid import generate_uid

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ct-", dir=folder.parent))
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    settings = truth["settings"]
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0060": "CT", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0008|0070": "ctbmd simulate",
        "0010|0010": "Phantom^ctbmd", "0010|0020": folder.parent.resolve().name,
        "0018|0060": str(settings["kvp"]), "0018|0050": f"{settings['slice_thickness_mm']:.3f}",
        "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": frame_uid,
        "0008|103e": "ctbmd digital phantom", "0028|1052": "0", "0028|1053": "1",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                      direction[1], direction[4], direction[7])),
    }
    if settings["phase"] != "native":
        common["0018|0010"] = "IODINE"
    try:
        for k in range(image.GetDepth()):
            sl = image[:, :, k]
            for tag, val in common.items():
                sl.SetMetaData(tag, val)
            pos = image.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0020|0032", "\\".join(f"{p:.4f}" for p in pos))
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0018", generate_uid())
            writer.SetFileName(str(staging / f"slice_{k:04d}.dcm"))
            writer.Execute(sl)
        if folder.exists():
            shutil.rmtree(folder)
        staging.replace(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


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
