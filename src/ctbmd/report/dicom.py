"""DICOM outputs for a DICOM input: a SEG of the vertebrae and ROIs, a TID 1500 SR, a Secondary Capture.

Written with highdicom (Herrmann et al., J Digit Imaging 2022,
doi:10.1007/s10278-022-00683-y), so that a PACS viewer (OHIF, 3D Slicer,
most vendor viewers) shows the result beside the CT it came from:

- ``vertebrae_seg.dcm``: a DICOM Segmentation (PS3.3 A.51, BINARY), one
  segment per named vertebra in the label map and one per trabecular ROI.
  The frames reference the source CT slices (Derivation Image and Referenced
  Series sequences), so viewers overlay it on that series. Vertebrae are coded
  with SNOMED CT body-structure codes (pydicom's code dictionary, DICOM PS3.16
  CID 7140 family); the trabecular ROIs are "Tissue / Bone tissue" with the
  vertebra as anatomic region.
- ``bmd_sr.dcm``: a Comprehensive 3D SR with the TID 1500 Measurement Report.
  Per measured level, one TID 1411 volumetric group references its ROI segment
  and holds the trabecular HU (mean, median, SD: DCM 112031 Attenuation
  Coefficient with SCT Mean/Median/Standard deviation as derivation), the
  BMD (K2HPO4 mg/cm³ and its 95% limits) with the calibration method, and the
  QC flags. A TID 1501 group holds the patient value and its ACR-QCT category.
- ``report_sc.dcm``: ``report.png`` as an RGB Secondary Capture for viewers
  without SEG or SR support.

Concepts that DICOM and SNOMED CT do not code (volumetric trabecular BMD, the
ACR-QCT categories, ctbmd's QC flags, the calibration methods) use the private
coding scheme :data:`CODING_SCHEME` ("99" prefix, PS3.3 8.1); its meanings
say what each code is. The ACR categories are BMD ranges (ACR-SPR-SSR
Practice Parameter for QCT, 2018), deliberately not coded as the diseases
osteopenia or osteoporosis.

New UIDs are made for every object; patient and study attributes are copied
from the source headers by highdicom. :func:`deidentify` then applies the DICOM
PS3.15 Annex E Basic Application Level Confidentiality Profile with dicognito
(consistent replacement of UIDs, names, IDs and dates across the three objects)
and the profile's table as tabulated by dicom-anonymizer (removal of the rest).
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass, replace

import numpy as np

from ctbmd import __version__
from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, NORMAL, OSTEOPENIA, OSTEOPOROSIS
from ctbmd.report.deidentify import deidentify
from ctbmd.types import LEVEL_ORDER, VERSE_LABELS, VERSE_NAMES

#: The files :func:`ctbmd.report.write_files` writes for a DICOM input: the SEG, SR and SC, in that order.
DICOM_FILES = ("vertebrae_seg.dcm", "bmd_sr.dcm", "report_sc.dcm")
#: Private coding scheme for concepts DICOM/SNOMED CT do not code (PS3.3 8.1: designators starting "99").
CODING_SCHEME = "99CTBMD"
MANUFACTURER = "ctbmd (open source)"
#: Series numbers of the written objects (arbitrary, high so they sort after the source series).
SERIES_NUMBERS = {"seg": 9901, "sr": 9902, "sc": 9903}
#: ctbmd's QC flags (:mod:`ctbmd.roi`) as private codes; CodeValue is at most 16 characters (VR SH).
FLAG_CODES = {
    "partial": ("FLAG-PARTIAL", "Vertebra cut by the scan edge"),
    "metal": ("FLAG-METAL", "Metal in or next to the ROI"),
    "suspected_fracture": ("FLAG-FRACTURE", "Suspected fracture (body height loss)"),
    "hyperdense_focus": ("FLAG-HYPERDENSE", "Hyperdense focus excluded from the ROI"),
    "too_small": ("FLAG-SMALL", "Trabecular ROI too small"),
}
#: ACR-QCT categories as private codes (ranges of K2HPO4-equivalent trabecular BMD, not diagnoses).
CATEGORY_CODES = {
    NORMAL: ("ACR-NORMAL", f"ACR-QCT normal BMD (> {ACR_NORMAL_MG_CM3:g} mg/cm3)"),
    OSTEOPENIA: ("ACR-OSTEOPENIA",
                 f"ACR-QCT osteopenia range ({ACR_OSTEOPOROSIS_MG_CM3:g}-{ACR_NORMAL_MG_CM3:g} mg/cm3)"),
    OSTEOPOROSIS: ("ACR-OSTEOPOROSIS", f"ACR-QCT osteoporosis range (< {ACR_OSTEOPOROSIS_MG_CM3:g} mg/cm3)"),
}


@dataclass(frozen=True)
class DicomObjects:
    """The three DICOM objects of one analysis (pydicom Datasets, highdicom subclasses).

    Attributes
    ----------
    seg : highdicom.seg.Segmentation
    sr : highdicom.sr.Comprehensive3DSR
    sc : highdicom.sc.SCImage or None
        None until :func:`with_secondary_capture` adds it.
    segments : dict of str to int
        Segment label (``"L1"``, ``"L1 trabecular ROI"``) -> segment number in ``seg``.
    source : pydicom.Dataset
        The first source CT header (patient, study and frame of reference of the SC).
    """

    seg: object
    sr: object
    sc: object | None
    segments: dict
    source: object


def private_code(value: str, meaning: str):
    """A :class:`pydicom.sr.coding.Code` in :data:`CODING_SCHEME`."""
    from pydicom.sr.coding import Code

    return Code(value, CODING_SCHEME, meaning)


def vertebra_code(level: str):
    """The SNOMED CT body-structure code of a vertebra (``"T12"``, ``"L1"``, ...).

    C1-C7 and L1-L5 use "<level> vertebra", T1-T12 "Bone structure of <level>"
    (pydicom's DICOM code dictionary, PS3.16). T13 and L6 (transitional, no
    SNOMED concept of their own) get private codes in :data:`CODING_SCHEME`.

    Raises
    ------
    KeyError
        ``level`` is not a VerSe level name (:data:`ctbmd.types.VERSE_LABELS`).
    """
    from pydicom.sr.codedict import codes

    VERSE_LABELS[level]  # KeyError for unknown names
    if level in ("T13", "L6"):
        return private_code(level, f"{level} (transitional vertebra)")
    name = f"BoneStructureOf{level}" if level.startswith("T") else f"{level}Vertebra"
    return getattr(codes.SCT, name)


def read_source_headers(files: tuple[str, ...]) -> list:
    """pydicom headers (no pixel data) of the source slices, in the order given.

    An empty SOPClassUID or SOPInstanceUID in the data set (left so by some
    anonymisers; the bundled ``ts_example_dicom`` is one) is taken from the
    file meta information (MediaStorageSOPClassUID/InstanceUID), which PS3.10
    7.1 requires to be equal to it, so the SEG and SR can reference the slice.

    Raises
    ------
    OSError
        A file went missing since it was read.
    """
    import pydicom

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in headers:
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(attr) and meta is not None and meta.get(meta_attr):
                setattr(ds, attr, meta.get(meta_attr))
    return headers


def _colour(i: int):
    import highdicom as hd
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10"](i % 10)
    return hd.color.CIELabColor.from_rgb(int(r * 255), int(g * 255), int(b * 255))


def build_seg(headers: list, vert_zyx: np.ndarray, roi_zyx: np.ndarray, measured: tuple[str, ...],
              labeller: str):
    """The DICOM SEG of the vertebra labels and trabecular ROIs.

    Parameters
    ----------
    headers : list of pydicom.Dataset
        Source CT headers, one per slice, in the order of the arrays' first axis.
    vert_zyx, roi_zyx : numpy.ndarray
        Integer label maps (VerSe numbering) on the input grid, shape
        ``(slices, rows, columns)``: index ``[k, r, c]`` is pixel (row r, column c)
        of ``headers[k]``.
    measured : tuple of str
        Levels whose ROIs were measured (their order sets the segment colours,
        as in ``report.png``).
    labeller : str
        Segmentation backend, recorded as the algorithm name.

    Returns
    -------
    seg : highdicom.seg.Segmentation
    segments : dict of str to int
        Segment label -> segment number.

    Raises
    ------
    ValueError, AttributeError
        highdicom refuses the source headers (missing geometry or UIDs).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = sorted((VERSE_NAMES[int(v)] for v in np.unique(vert_zyx) if int(v) in VERSE_NAMES), key=LEVEL_ORDER.index)
    roi_names = [lv for lv in measured if (roi_zyx == VERSE_LABELS[lv]).any()]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"ctbmd {labeller} labeller" if labeller == "builtin" else f"ctbmd ({labeller} labels)",
        family=(codes.cid7162.ArtificialIntelligence if labeller == "totalsegmentator"
                else codes.cid7162.MorphologicalOperations),
        version=__version__)
    descriptions, masks = [], []
    for name in names:
        colour = measured.index(name) if name in measured else 7  # grey for unmeasured, as in report.png
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1, segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=vertebra_code(name),
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm, tracking_id=f"vertebra {name}",
            tracking_uid=hd.UID(), display_color=_colour(colour)))
        masks.append((vert_zyx, VERSE_LABELS[name]))
    for name in roi_names:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1, segment_label=f"{name} trabecular ROI",
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.BoneTissue,
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm, tracking_id=f"{name} trabecular ROI",
            tracking_uid=hd.UID(), anatomic_regions=[vertebra_code(name)], display_color=_colour(measured.index(name))))
        masks.append((roi_zyx, VERSE_LABELS[name]))
    segments = {d.SegmentLabel: int(d.SegmentNumber) for d in descriptions}
    # one contiguous block per segment, handed over as a (slices, rows, columns, segments) view: each frame
    # highdicom takes (pixels[k, ..., i]) is then contiguous, which makes its per-frame copies 10x faster
    stack = np.empty((len(masks),) + vert_zyx.shape, dtype=bool)
    for i, (labels, value) in enumerate(masks):
        np.equal(labels, value, out=stack[i])
    pixels = np.moveaxis(stack, 0, -1)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["seg"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="ctbmd",
        software_versions=__version__, device_serial_number="none",
        series_description="ctbmd vertebrae and trabecular ROIs", content_label="VERTEBRAE",
        content_description="Vertebrae (named) and trabecular BMD ROIs", content_creator_name="ctbmd^")
    return seg, segments


def build_sr(result: dict, headers: list, seg, segments: dict):
    """The TID 1500 Measurement Report of ``result`` (the ``result.json`` dict) as a Comprehensive 3D SR.

    Each measured level is a volumetric ROI group (TID 1411) referencing its
    ROI segment in ``seg`` (or the vertebra's segment when the ROI is empty),
    with trabecular HU mean/median/SD, BMD in K2HPO4 mg/cm³ (rounded as in
    ``result.json``) with its 95% limits and the calibration method, and one
    qualitative evaluation per QC flag. The patient value and ACR-QCT category
    form a TID 1501 group. Values that are null in ``result.json`` are left out.

    Raises
    ------
    ValueError
        highdicom cannot encode a value or a reference (its own checks).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    cal = result["calibration"]
    method = private_code(f"CAL-{cal['method'][:12].upper()}", f"ctbmd calibration: {cal['method'].replace('_', ' ')}")
    params = {"convention": "BMD = (HU - beta_ct) / sigma_ct (Mindways QCT Pro)",
              "sigma_ct_hu_per_mg_cm3": str(cal["sigma_ct_hu_per_mg_cm3"]), "beta_ct_hu": str(cal["beta_ct_hu"]),
              "effective_energy_kev": str(cal["effective_energy_kev"]), "kvp": str(cal["kvp"])}
    algorithm = hd.sr.AlgorithmIdentification(name="ctbmd", version=__version__,
                                              parameters=[f"{k}={v}" for k, v in params.items()])
    terms = _SrTerms(method=method, algorithm=algorithm, seg=seg,
                     source_series=hd.sr.SourceSeriesForSegmentation(headers[0].SeriesInstanceUID))
    groups = [g for g in (_level_group(lv, segments, terms) for lv in result["levels"]) if g is not None]
    patient = _patient_group(result["patient"], terms)
    if patient is not None:
        groups.append(patient)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="ctbmd", manufacturer_name=MANUFACTURER, model_name=f"ctbmd {__version__}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ComputedTomography, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*headers, seg], content=report, series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="ctbmd trabecular BMD report (research use only)")
    sr.CodingSchemeIdentificationSequence = [coding_scheme_item()]
    return sr


@dataclass(frozen=True)
class _SrTerms:
    """What every content group of one SR shares: the calibration method, the algorithm and the SEG."""

    method: object
    algorithm: object
    seg: object
    source_series: object


def _level_group(lv: dict, segments: dict, terms: _SrTerms):
    """The TID 1411 group of one level (``result.json``'s level dict), or None when it has no segment."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    level = lv["level"]
    region = f"{level} trabecular ROI" if f"{level} trabecular ROI" in segments else level
    number = segments.get(region)
    if number is None:
        return None
    mg = codes.UCUM.MilligramsPerCubicCentimeter
    measurements = []
    for key, derivation in (("trabecular_hu_mean", codes.SCT.Mean), ("trabecular_hu_median", codes.SCT.Median),
                            ("trabecular_hu_sd", codes.SCT.StandardDeviation)):
        if lv[key] is not None:
            measurements.append(hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=lv[key],
                                                  unit=codes.UCUM.HounsfieldUnit, derivation=derivation))
    if lv["bmd_mg_cm3"] is not None:
        bmd_name = private_code("BMD-TRAB-K2HPO4", "Trabecular bone mineral density (K2HPO4-equivalent, QCT)")
        measurements.append(hd.sr.Measurement(name=bmd_name, value=lv["bmd_mg_cm3"], unit=mg, derivation=codes.SCT.Mean,
                                              method=terms.method, algorithm_id=terms.algorithm))
        if lv["bmd_ci95_mg_cm3"]:
            for value, which in zip(lv["bmd_ci95_mg_cm3"], ("LOW", "HIGH")):
                measurements.append(hd.sr.Measurement(
                    name=private_code(f"BMD-CI95-{which}", f"BMD 95% interval, {which.lower()} limit (K2HPO4)"),
                    value=value, unit=mg, method=terms.method, algorithm_id=terms.algorithm))
    flag_name = private_code("QC-FLAG", "ctbmd quality flag")
    evaluations = [hd.sr.QualitativeEvaluation(flag_name, private_code(*FLAG_CODES.get(f, (f[:16].upper(), f))))
                   for f in lv["flags"]]
    evaluations.append(hd.sr.QualitativeEvaluation(private_code("USED-PATIENT", "Level used for the patient value"),
                                                   codes.SCT.Yes if lv["used_for_patient"] else codes.SCT.No))
    seg = terms.seg
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=region if region != level else f"{level} vertebra (no trabecular ROI)"),
        referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                                   segment_number=number, source_series=terms.source_series),
        finding_type=codes.SCT.BoneTissue, finding_sites=[hd.sr.FindingSite(vertebra_code(level))],
        measurements=measurements or None, qualitative_evaluations=evaluations)


def _patient_group(p: dict, terms: _SrTerms):
    """The TID 1501 group of the patient value and ACR-QCT category (``result.json``'s patient), or None."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mg = codes.UCUM.MilligramsPerCubicCentimeter
    measurements, evaluations = [], []
    if p["bmd_mg_cm3"] is not None:
        used = "+".join(p["levels_used"])
        measurements.append(hd.sr.Measurement(
            name=private_code("BMD-PATIENT", f"Patient trabecular BMD, mean of {used} (K2HPO4)"),
            value=p["bmd_mg_cm3"], unit=mg, method=terms.method, algorithm_id=terms.algorithm))
        for value, which in zip(p["bmd_ci95_mg_cm3"] or (), ("LOW", "HIGH")):
            measurements.append(hd.sr.Measurement(
                name=private_code(f"BMD-PAT-CI-{which}", f"Patient BMD 95% interval, {which.lower()} limit (K2HPO4)"),
                value=value, unit=mg, method=terms.method, algorithm_id=terms.algorithm))
    if p["category"] is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(private_code("ACR-QCT-CAT", "ACR-QCT BMD category"),
                                                       private_code(*CATEGORY_CODES[p["category"]])))
        evaluations.append(hd.sr.QualitativeEvaluation(
            private_code("CAT-CERTAIN", "Category certain (95% interval within one category)"),
            codes.SCT.Yes if p["category_certain"] else codes.SCT.No))
    if not (measurements or evaluations):
        return None
    lumbar = p["levels_used"] and all(lv.startswith("L") for lv in p["levels_used"])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient"),
        finding_sites=[hd.sr.FindingSite(codes.SCT.LumbarSpine)] if lumbar else None,
        method=terms.method, algorithm_id=terms.algorithm, measurements=measurements or None,
        qualitative_evaluations=evaluations or None)


def coding_scheme_item():
    """The SOP Common Coding Scheme Identification item (PS3.3 C.12.1.1.3) that declares :data:`CODING_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "ctbmd private codes for trabecular BMD reporting"
    item.CodingSchemeResponsibleOrganization = "ctbmd project (open source)"
    return item


def build_sc(header, rgb: np.ndarray, identifying_text: bool):
    """The report picture as an RGB Secondary Capture in the source's study.

    Parameters
    ----------
    header : pydicom.Dataset
        One source CT header (patient, study and frame of reference come from it).
    rgb : numpy.ndarray
        uint8, shape ``(rows, columns, 3)``.
    identifying_text : bool
        Whether the picture's text may identify the patient (the input's
        folder name is in its title): sets BurnedInAnnotation.
    """
    import highdicom as hd

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header, pixel_array=np.ascontiguousarray(rgb[..., :3], dtype=np.uint8),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["sc"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, patient_orientation=("A", "F"),
        series_description="ctbmd BMD report image (research use only)")
    sc.BurnedInAnnotation = "YES" if identifying_text else "NO"
    if "Laterality" in sc:
        del sc.Laterality
    sc.ImageLaterality = "U"  # General Image: the spine is unpaired, which settles General Series Laterality (2C)
    sc.ImageComments = "ctbmd report: research use only; not a medical device"
    return sc


#: Attributes ctbmd writes itself (not copied from the source): kept by :func:`deidentify` under the
#: Clean Descriptors option (PS3.15 E.3.5), since their text is ctbmd's own.
def build_seg_and_sr(result: dict, files: tuple[str, ...], vert_zyx: np.ndarray, roi_zyx: np.ndarray,
                     labeller: str) -> DicomObjects:
    """The SEG and SR of one analysis (``sc`` is None; see :func:`with_secondary_capture`).

    Parameters
    ----------
    result : dict
        The ``result.json`` content.
    files : tuple of str
        The source slice files in input-grid slice order (:attr:`ctbmd.types.ScanInfo.source_files`).
    vert_zyx, roi_zyx : numpy.ndarray
        Label maps on the input grid, shape ``(len(files), rows, columns)``.
    labeller : str
        Segmentation backend name.

    Raises
    ------
    ValueError
        The label maps do not match the source slices, or the source lacks a
        UID the objects must reference (study, series, frame of reference, SOP).
    OSError
        A source file cannot be read any more.
    """
    headers = read_source_headers(files)
    missing = [a for a in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID",
                           "SOPClassUID") if not all(h.get(a) for h in headers)]
    if missing:
        raise ValueError(f"the source slices have no {', '.join(missing)} (required, type 1), so nothing "
                         "could reference them")
    if vert_zyx.shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        raise ValueError(f"label map shape {vert_zyx.shape} does not match {len(headers)} slices of "
                         f"{headers[0].Rows}x{headers[0].Columns}")
    measured = tuple(lv["level"] for lv in result["levels"])
    seg, segments = build_seg(headers, vert_zyx, roi_zyx, measured, labeller)
    sr = build_sr(result, headers, seg, segments)
    return DicomObjects(seg, sr, None, segments, headers[0])


def with_secondary_capture(objects: DicomObjects, png: bytes, deidentified: bool = False) -> DicomObjects:
    """Add the Secondary Capture of ``png`` (``report.png`` bytes) and, with ``deidentified``, de-identify all three.

    Parameters
    ----------
    objects : DicomObjects
        From :func:`build_seg_and_sr` (``sc`` None).
    png : bytes
        The report picture (PNG, any mode; stored as 8-bit RGB).
    deidentified : bool
        Apply :func:`deidentify` to the SEG, SR and SC together.

    Returns
    -------
    DicomObjects
        With ``sc`` set (and new, de-identified datasets with ``deidentified``).
    """
    from PIL import Image

    with Image.open(_io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    sc = build_sc(objects.source, rgb, identifying_text=not deidentified)
    seg, sr = objects.seg, objects.sr
    if deidentified:
        seg, sr, sc = deidentify([seg, sr, sc])
    return replace(objects, seg=seg, sr=sr, sc=sc)
