"""Read one CT series from a DICOM folder: header and geometry checks, pixel decoding, scan information.

The series is found and chosen by :mod:`ctbmd.io.dicom_series`; its pixels
are decoded by SimpleITK/GDCM (which reads JPEG 2000 and JPEG-LS as is), and
what GDCM read is checked against the validated headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from ctbmd.errors import InvalidInputError
from ctbmd.io.dicom_header import (attr_float, attr_int, attr_numbers, attr_raw, attr_text, check_dicom_header,
                                   header_kvp)
from ctbmd.io.dicom_series import DicomSeries, choose_series, scan_dicom_folder
from ctbmd.io.image import grid_of
from ctbmd.io.limits import AIR_HU, GAP_FACTOR, MAX_TILT_DEG, SLICE_THICKNESS_RANGE_MM
from ctbmd.io.quiet import log, quiet_libraries
from ctbmd.types import ScanInfo


class DicomRead(NamedTuple):
    """What :func:`read_dicom_series` read.

    Attributes
    ----------
    image : SimpleITK.Image
        The series in HU (RescaleSlope/Intercept applied), as stored (not
        reoriented), in the reader's pixel type (int16 for most CT).
    info : ScanInfo
        Where it came from, its header attributes and the notes of the read.
    """

    image: sitk.Image
    info: ScanInfo


def check_slice_geometry(positions: np.ndarray, iop: np.ndarray, source: str | Path) -> list[str]:
    """Check sorted slice positions for duplicates, gaps and gantry tilt.

    Parameters
    ----------
    positions : numpy.ndarray
        ImagePositionPatient of each slice, shape ``(n, 3)``, LPS mm, sorted along
        the slice normal.
    iop : numpy.ndarray
        ImageOrientationPatient, shape ``(6,)``.
    source : str or Path
        Named in errors.

    Returns
    -------
    list of str
        Warnings (small spacing jitter).

    Raises
    ------
    InvalidInputError
        On duplicate positions, a gap (a step > 1.5x the median step), or gantry
        tilt (slice offsets not along the slice normal by more than 0.5 degrees).
    """
    warnings = []
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(positions @ normal)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise InvalidInputError(f"duplicate slice position at {positions[i] @ normal:.2f} mm along the slice normal", source)
    median = float(np.median(steps))
    if np.any(steps > GAP_FACTOR * median):
        i = int(np.argmax(steps))
        raise InvalidInputError(
            f"gap in the slices: step of {steps[i]:.2f} mm after slice {i + 1} where the series steps "
            f"{median:.2f} mm (missing slices?)", source)
    if np.ptp(steps) > 0.05 * median:
        warnings.append(f"slice spacing jitter {np.ptp(steps):.2f} mm around a {median:.2f} mm step")
    offsets = positions - positions[0]
    along = offsets @ normal
    shear = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if len(positions) > 1 and along[-1] > 0:
        tilt = float(np.degrees(np.arctan2(shear[-1], along[-1])))
        if tilt > MAX_TILT_DEG:
            raise InvalidInputError(
                f"gantry tilt of {tilt:.1f} degrees (slice positions are sheared); resample the series "
                "to an orthogonal grid first", source)
    return warnings


def _check_reader_geometry(image: sitk.Image, first, positions: np.ndarray, source: str | Path) -> None:
    """The pixel size, first position and slice step that ITK (GDCM) read must be the header's.

    GDCM takes geometry from attributes of its own choosing (for a SOP class it
    does not know, a 1 mm pixel); checked here against the validated header, so
    any disagreement stops the read instead of scaling the scan silently.
    """
    spacing = attr_numbers(first, "PixelSpacing", 2)  # row spacing (between rows, along y), column spacing
    # ITK's slice spacing is the mean step from the first to the last slice, not the median
    step = float(np.linalg.norm(positions[-1] - positions[0]) / (len(positions) - 1)) if len(positions) > 1 else None
    expected = [spacing[1], spacing[0]] + ([step] if step is not None else [])
    got = list(image.GetSpacing())[:len(expected)]
    origin = np.asarray(image.GetOrigin())
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-3) or not np.allclose(origin, positions[0], atol=0.01):
        raise InvalidInputError(
            f"the DICOM reader read voxels of {' x '.join(f'{v:g}' for v in got)} mm at {np.round(origin, 2).tolist()} "
            f"where the headers say {' x '.join(f'{v:g}' for v in expected)} mm at {np.round(positions[0], 2).tolist()}; "
            "the series' geometry attributes disagree with each other", source)


def _check_alike(series: DicomSeries) -> None:
    """Every slice of ``series`` has the first slice's matrix and pixel spacing (ITK reads the volume with the
    first slice's), else :class:`InvalidInputError` naming the first file that differs and the attribute."""
    first = series.headers[0]
    ref = (int(first.Rows), int(first.Columns), attr_numbers(first, "PixelSpacing", 2))
    for f, h in zip(series.files[1:], series.headers[1:]):
        for name, a, b in (("Rows", ref[0], int(h.Rows)), ("Columns", ref[1], int(h.Columns))):
            if a != b:
                raise InvalidInputError(f"{name} {b} differs from the series' first slice ({a}): one series must "
                                        "have one matrix", f)
        spacing = attr_numbers(h, "PixelSpacing", 2)
        if np.any(np.abs(spacing - ref[2]) > 1e-3 * ref[2]):
            raise InvalidInputError(f"PixelSpacing {attr_raw(h, 'PixelSpacing')} differs from the series' first "
                                    f"slice ({ref[2][0]:g}\\{ref[2][1]:g}): one series must have one pixel size", f)


def _sorted_slices(series: DicomSeries) -> tuple[list[str], list]:
    """Files and headers of ``series`` sorted along the slice normal (inferior to superior for axial)."""
    iop = np.asarray([float(v) for v in series.headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in series.headers])
    order = np.argsort(pos @ normal)
    return [series.files[i] for i in order], [series.headers[i] for i in order]


def _read_pixels(files: list[str], first, folder: Path) -> sitk.Image:
    """Decode the sorted slice ``files`` (SimpleITK/GDCM, rescaled to HU); PixelPaddingValue voxels become
    :data:`AIR_HU`."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with quiet_libraries():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot decode DICOM pixel data ({str(exc).strip().splitlines()[-1][:120]})",
                                folder) from None
    padding = attr_int(first, "PixelPaddingValue")
    if padding is not None:
        slope = float(first.get("RescaleSlope", 1.0))
        intercept = float(first.get("RescaleIntercept", 0.0))
        pad_hu = slope * float(padding) + intercept
        arr = sitk.GetArrayViewFromImage(image)
        if np.any(arr == pad_hu):
            image = sitk.Mask(image, sitk.Cast(image != pad_hu, sitk.sitkUInt8), outsideValue=AIR_HU)
    return image


def read_dicom_series(folder: str | Path, series_uid: str | None = None,
                      files: Sequence[str | Path] | None = None) -> DicomRead:
    """Read one CT series from a DICOM folder (or from ``files``, see :func:`scan_dicom_folder`).

    Returns
    -------
    DicomRead
        ``image``: the series in HU (RescaleSlope/Intercept applied), as stored (not reoriented), in the
        reader's pixel type (int16 for most CT; :func:`ctbmd.io.read_ct` makes it float32); ``info``: its
        :class:`ScanInfo`.

    Raises
    ------
    InvalidInputError
        No CT series, an unknown ``series_uid``, geometry problems (see
        :func:`check_slice_geometry`) or undecodable pixel data.
    """
    folder = Path(folder)
    notes: list[str] = []
    series = scan_dicom_folder(folder, files, notes=notes)
    chosen = choose_series(series, folder, series_uid, notes)
    if len(series) > 1:
        notes.append(f"{len(series)} series in folder; chose {chosen.key} ({chosen.description or 'no description'}, "
                     f"{len(chosen.files)} slices, {'/'.join(chosen.image_type[:2]) or 'no ImageType'})")
        log.info(notes[-1])
    if chosen.modality != "CT":
        raise InvalidInputError(f"not a CT: series Modality is {chosen.modality or 'missing'}", folder)
    for f, h in zip(chosen.files, chosen.headers):
        check_dicom_header(h, f)
    _check_alike(chosen)
    files, headers = _sorted_slices(chosen)
    first = headers[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    if len(files) >= 2:
        notes += check_slice_geometry(positions, iop, folder)
    image = _read_pixels(files, first, folder)

    def attr(name):
        return attr_text(first, name) or None

    kvp, kvp_note = header_kvp(first, files[0])
    if kvp_note:
        notes.append(kvp_note)
    thickness = attr_float(first, "SliceThickness")
    if "SliceThickness" in first and (thickness is None or not SLICE_THICKNESS_RANGE_MM[0] <= thickness
                                      <= SLICE_THICKNESS_RANGE_MM[1]):
        notes.append(f"SliceThickness {attr_raw(first, 'SliceThickness')} in {Path(files[0]).name} is not a "
                     f"thickness of {SLICE_THICKNESS_RANGE_MM[0]:g}-{SLICE_THICKNESS_RANGE_MM[1]:g} mm: not used "
                     "(the slice spacing stands for it)")
        thickness = None
    _check_reader_geometry(image, first, positions, folder)
    info = ScanInfo(
        path=str(folder), format="dicom", input_grid=grid_of(image),
        series_uid=str(first.get("SeriesInstanceUID", "") or chosen.key),
        kvp=kvp,
        contrast_agent=str(attr("ContrastBolusAgent")) if attr("ContrastBolusAgent") is not None else None,
        convolution_kernel=str(attr("ConvolutionKernel")) if attr("ConvolutionKernel") is not None else None,
        manufacturer=str(attr("Manufacturer")) if attr("Manufacturer") is not None else None,
        patient_id=str(attr("PatientID")) if attr("PatientID") is not None else None,
        slice_thickness_mm=thickness, notes=tuple(notes), source_files=tuple(files),
    )
    return DicomRead(image, info)
