"""Stage 4: contrast phase, ACR-QCT category and Pickhardt L1 HU flag.

* ACR-QCT (ACR-SPR-SSR Practice Parameter for QCT, 2018): mean trabecular BMD
  of two lumbar vertebrae, L1 and L2 by default. > 120 mg/cm^3 normal,
  80-120 osteopenia (low bone mass), < 80 osteoporosis.
* Pickhardt et al., Ann Intern Med 2013;158:588-595: L1 trabecular HU <= 160
  is 90% sensitive, <= 110 more than 90% specific, for osteoporosis.
* Contrast phase from the aortic blood median HU (native < 100 HU; portal-venous
  100-200 HU; arterial > 200 HU) and the DICOM ContrastBolusAgent (0018,0010).
  Contrast raises trabecular HU by about 10-20 HU (Kaesmacher et al. 2017; the
  TotalSegmentator thresholds add 14.75-20 HU), so enhanced scans are flagged:
  their BMD reads high.
"""

from __future__ import annotations

from typing import Literal, get_args

from ctbmd.types import (Calibration, ContrastPhase, LevelMeasurement, PatientClassification, PickhardtFlag,
                         ReferenceTissue, ScanInfo, level_index)

#: A bone-density category, from high to low BMD: ACR-QCT (2018) and WHO (TRS 843, 1994) share the names.
Category = Literal["normal", "osteopenia", "osteoporosis"]
#: The categories in order, from high to low BMD (class index 0, 1, 2 of the models).
CATEGORIES: tuple[Category, ...] = get_args(Category)
NORMAL, OSTEOPENIA, OSTEOPOROSIS = CATEGORIES

ACR_NORMAL_MG_CM3 = 120.0
ACR_OSTEOPOROSIS_MG_CM3 = 80.0
PICKHARDT_SENSITIVE_HU = 160.0
PICKHARDT_SPECIFIC_HU = 110.0
AORTA_ENHANCED_HU = 100.0
AORTA_ARTERIAL_HU = 200.0
ACR_LEVELS = ("L1", "L2", "L3", "L4")
#: WHO T-score thresholds (WHO Technical Report Series 843, 1994): <= -2.5 osteoporosis, < -1 osteopenia.
WHO_OSTEOPOROSIS_T = -2.5
WHO_OSTEOPENIA_T = -1.0
#: T-scores are reported to one decimal (DXA reports; WHO TRS 843): "at or below -2.5" is "below -2.45".
T_SCORE_STEP = 0.1


def detect_contrast_phase(info: ScanInfo, tissues: dict[str, ReferenceTissue]) -> ContrastPhase:
    """Decide the contrast phase from the aortic blood HU and the DICOM tag.

    Returns
    -------
    ContrastPhase
        ``native``, ``portal_venous``, ``arterial``, ``contrast`` (tag only) or ``unknown``.
    """
    blood = tissues.get("aortic_blood")
    aorta = blood.hu_median if blood is not None and blood.hu_iqr <= 60 else None
    tag = info.contrast_agent
    if aorta is not None and aorta >= AORTA_ARTERIAL_HU:
        return ContrastPhase("arterial", aorta, tag, f"aortic blood {aorta:.0f} HU >= {AORTA_ARTERIAL_HU:.0f}")
    if aorta is not None and aorta >= AORTA_ENHANCED_HU:
        return ContrastPhase("portal_venous", aorta, tag, f"aortic blood {aorta:.0f} HU in 100-200")
    if tag:
        return ContrastPhase("contrast", aorta, tag, f"DICOM ContrastBolusAgent = {tag!r}")
    if aorta is not None:
        return ContrastPhase("native", aorta, tag, f"aortic blood {aorta:.0f} HU < {AORTA_ENHANCED_HU:.0f}, no contrast tag")
    return ContrastPhase("unknown", None, tag, "aorta not found and no contrast tag")


def acr_category(bmd_mg_cm3: float) -> Category:
    """ACR-QCT category of a K2HPO4-equivalent BMD.

    Parameters
    ----------
    bmd_mg_cm3 : float
        Trabecular BMD, mg/cm³ K2HPO4-equivalent (QCT).

    Returns
    -------
    Category
        ``normal`` above 120, ``osteopenia`` from 80 to 120, ``osteoporosis`` below 80
        (ACR-SPR-SSR Practice Parameter for QCT, 2018).
    """
    if bmd_mg_cm3 > ACR_NORMAL_MG_CM3:
        return NORMAL
    if bmd_mg_cm3 >= ACR_OSTEOPOROSIS_MG_CM3:
        return OSTEOPENIA
    return OSTEOPOROSIS


def who_category(t_score: float) -> Category:
    """WHO category of a DXA T-score.

    Parameters
    ----------
    t_score : float
        T-score (SD from the young-adult mean).

    Returns
    -------
    Category
        ``osteoporosis`` at -2.5 or below, ``osteopenia`` below -1, else ``normal`` (WHO TRS 843, 1994).
    """
    if t_score <= WHO_OSTEOPOROSIS_T:
        return OSTEOPOROSIS
    if t_score < WHO_OSTEOPENIA_T:
        return OSTEOPENIA
    return NORMAL


def pickhardt_flag(l1_hu: float | None) -> PickhardtFlag:
    """Pickhardt 2013 L1 trabecular HU screening flag.

    Parameters
    ----------
    l1_hu : float or None
        Median trabecular HU of L1 (native scan), or None when L1 is not usable.

    Returns
    -------
    PickhardtFlag
        ``osteoporosis_likely`` at or below 110 HU (over 90% specific), ``osteoporosis_possible`` at or
        below 160 HU (90% sensitive), else ``osteoporosis_unlikely``; ``not_available`` without L1
        (Pickhardt et al., Ann Intern Med 2013;158:588-595).
    """
    if l1_hu is None:
        return PickhardtFlag(None, "not_available")
    if l1_hu <= PICKHARDT_SPECIFIC_HU:
        flag = "osteoporosis_likely"
    elif l1_hu <= PICKHARDT_SENSITIVE_HU:
        flag = "osteoporosis_possible"
    else:
        flag = "osteoporosis_unlikely"
    return PickhardtFlag(round(l1_hu, 1), flag, PICKHARDT_SPECIFIC_HU, PICKHARDT_SENSITIVE_HU)


def classify_patient(levels: list[LevelMeasurement], calibration: Calibration,
                     phase: ContrastPhase) -> PatientClassification:
    """Patient-level BMD and ACR-QCT category from L1 and L2.

    BMD comes from the trabecular ROI *mean* HU, as QCT reports it (QCT PRO
    User Guide; ACR-SPR-SSR Practice Parameter for QCT, 2018); the median is
    kept in ``hu_median_mean``. The 95% interval comes from
    :meth:`Calibration.interval_mg_cm3`; when it spans 80 or 120 mg/cm^3 the
    category is marked uncertain.

    When L1 or L2 is unusable (flagged partial, too small, metal or suspected
    fracture), the two usable levels of L1-L4 nearest to L1/L2 are averaged and
    named in ``levels_used`` and ``notes``.
    """
    usable = {m.level: m for m in levels if m.usable and m.level in ACR_LEVELS}
    ranked = sorted(usable, key=lambda n: (abs(level_index(n) - (level_index("L1") + 0.5)), level_index(n)))
    used = tuple(sorted(ranked[:2], key=level_index))
    notes = []
    if used and used != ("L1", "L2"):
        notes.append(f"L1/L2 not both usable; used {', '.join(used) or 'none'}")
    if phase.enhanced:
        notes.append(f"contrast-enhanced ({phase.phase}): trabecular HU and BMD read about 10-20 HU high")
    l1 = next((m for m in levels if m.level == "L1"), None)
    pick = pickhardt_flag(l1.hu_median if l1 is not None and l1.usable else None)
    if len(used) < 2:
        notes.append("fewer than two usable lumbar levels: no patient category")
        return PatientClassification(None, None, used, None, "ACR-QCT", pick, tuple(notes))
    hu = sum(usable[n].reported_hu for n in used) / 2
    hu_median = sum(usable[n].hu_median for n in used) / 2
    bmd = calibration.to_mg_cm3(hu)
    ci = calibration.interval_mg_cm3(hu)
    certain = None
    if bmd is None:
        notes.append("calibration unavailable: HU only, no ACR category")
    elif ci is not None:
        spanned = [t for t in (ACR_OSTEOPOROSIS_MG_CM3, ACR_NORMAL_MG_CM3) if ci[0] < t < ci[1]]
        certain = not spanned
        if spanned:
            notes.append(f"category uncertain: the 95% interval {ci[0]:.0f}-{ci[1]:.0f} mg/cm^3 spans "
                         f"{' and '.join(f'{t:.0f}' for t in spanned)} mg/cm^3")
    return PatientClassification(
        bmd_mg_cm3=None if bmd is None else round(bmd, 1), hu_mean=round(hu, 1), levels_used=used,
        category=None if bmd is None else acr_category(bmd), category_system="ACR-QCT", pickhardt=pick,
        notes=tuple(notes), bmd_ci95_mg_cm3=None if ci is None else (round(ci[0], 1), round(ci[1], 1)),
        category_certain=certain, hu_median_mean=round(hu_median, 1))

