"""The description of a K2HPO4 rod phantom: its rods, diameter and optional centres, and the text forms
accepted for it (``ctbmd run --rods``, ``ctbmd calibrate-scanner --rods``).

Also the constants shared by the rod modules (:mod:`ctbmd.calibrate.rod_search`,
:mod:`ctbmd.calibrate.rod_find`, :mod:`ctbmd.calibrate.rod_fit`,
:mod:`ctbmd.calibrate.rod_profile`). The QCT Pro convention and the frame are
described in :mod:`ctbmd.calibrate.rods`.

Errors: a malformed rod description raises :class:`~ctbmd.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ctbmd.errors import UsageError
from ctbmd.materials import QCT_PRO_BETA_SHIFT, QCT_PRO_SIGMA_SHIFT

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
