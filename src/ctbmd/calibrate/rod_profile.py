"""Asynchronous rod-phantom calibration: a scanner profile made from a scan of the phantom on its own
(:func:`make_profile`, :func:`save_profile`, :func:`load_profile`) and applied to later patient scans
(:func:`check_profile`, :func:`profile_calibration`).

Wang et al. (Sci Rep 2017;7:6284) found asynchronous and synchronous BMD to
agree within 1.4-6.7%. Because a bigger patient hardens the beam, the
profile's slope is scaled to the patient's size with the effective-energy
table of :mod:`ctbmd.calibrate.energy` (see :func:`profile_calibration`).

Errors: a missing or malformed profile raises
:class:`~ctbmd.errors.InvalidInputError` (exit 3); a profile that does not
match the scan (kVp, kernel) raises :class:`~ctbmd.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from scipy import ndimage as ndi

from ctbmd.calibrate.rod_find import find_rods, slice_range
from ctbmd.calibrate.rod_fit import fit_rods, monoenergetic_equivalent_kev, t_quantile_975
from ctbmd.calibrate.rod_spec import BODY_HU, MAX_KVP_DIFFERENCE, PROFILE_SCHEMA, SIGMA_RANGE, RodSpec
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.materials import qct_pro_line
from ctbmd.types import Calibration, CTVolume, ScanInfo


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
        Slices to use (LPS z mm), as in :func:`~ctbmd.calibrate.rod_find.find_rods`.
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
        (exit 3) Rods not found (see :func:`~ctbmd.calibrate.rod_find.find_rods`).
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
        k0, k1, _ = slice_range(ct, z_range_mm)
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
