"""The settings of a digital phantom (:class:`PhantomSpec`, with their validation), the phantom itself
(:class:`Phantom`), the text forms of ``ctbmd simulate``'s ``--bmd`` and ``--fracture`` options, and
the varied cohorts of :func:`cohort_specs`.

Errors: invalid settings raise :class:`~ctbmd.errors.UsageError` (exit 2) naming the option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ctbmd.errors import UsageError
from ctbmd.simulate import anatomy as an
from ctbmd.simulate import thorax
from ctbmd.types import Grid

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
        JSON-ready ground truth (see :func:`ctbmd.simulate.simulate_phantom`).
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
        Pass each to :func:`ctbmd.simulate.simulate_phantom`.
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
