"""Seeded header fuzzing of DICOM series and NIfTI files (issue 17), shared by ``test_fuzz.py`` and
``python tests/fuzz_headers.py N`` (which prints the counts).

Each variant corrupts one header attribute, in one slice or in every slice (DICOM) or in the file (NIfTI),
with a value drawn from the ways broken scanners, anonymisers and converters write them: deleted, empty,
not a number, NaN, infinite, zero, negative, huge, another count of values, garbage bytes. The variant is
read as ``ctbmd run`` reads it, and classified:

``refused``
    a :class:`~ctbmd.errors.CtbmdError` (exit 2-4) with a one-line reason;
``same_input``
    read into the very volume, geometry and acquisition facts of the unmutated file: the analysis, a pure
    function of them, gives the unmutated answer;
``same_answer``
    read into something else, analysed in full: the same levels, category and BMD within noise;
``changed_said``
    another answer, with a warning naming the attribute;
``silent``
    another answer without a word: a failure;
``internal``
    any other exception (the CLI's exit 5, with a traceback under ``--debug``): a failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

#: BMD difference (mg/cm³) within which an answer counts as the same: well under the ROI noise of a 3 mm scan.
BMD_TOL_MG_CM3 = 2.0

#: DICOM attributes mutated: (tag, VR, keyword).
DICOM_ATTRIBUTES = [
    (0x00200037, "DS", "ImageOrientationPatient"), (0x00200032, "DS", "ImagePositionPatient"),
    (0x00280030, "DS", "PixelSpacing"), (0x00280010, "US", "Rows"), (0x00280011, "US", "Columns"),
    (0x00281053, "DS", "RescaleSlope"), (0x00281052, "DS", "RescaleIntercept"),
    (0x00280004, "CS", "PhotometricInterpretation"), (0x00180060, "DS", "KVP"),
    (0x00180050, "DS", "SliceThickness"), (0x0020000E, "UI", "SeriesInstanceUID"),
    (0x0020000D, "UI", "StudyInstanceUID"), (0x00080060, "CS", "Modality"), (0x00080008, "CS", "ImageType"),
    (0x00080016, "UI", "SOPClassUID"), (0x00280120, "SS", "PixelPaddingValue"),
    (0x00280100, "US", "BitsAllocated"), (0x00280101, "US", "BitsStored"), (0x00280102, "US", "HighBit"),
    (0x00280103, "US", "PixelRepresentation"), (0x00280002, "US", "SamplesPerPixel"),
    (0x00200013, "IS", "InstanceNumber"), (0x00201041, "DS", "SliceLocation"),
    (0x00180088, "DS", "SpacingBetweenSlices"), (0x00185100, "CS", "PatientPosition"),
    (0x00180210, "CS", "ContrastBolusAgent"), (0x00181210, "SH", "ConvolutionKernel"),
    (0x00100020, "LO", "PatientID"), (0x00200011, "IS", "SeriesNumber"),
]

#: Text values for string VRs (DS, IS, CS, UI, LO, SH); None deletes the attribute.
TEXT_VALUES = [None, "", "x", "abc\\def", "nan", "inf", "-inf", "0", "-1", "1e9", "-1e9", "1\\2", "1\\2\\3\\4\\5\\6\\7",
               "0\\0\\0\\0\\0\\0", "1e-9", " ", "\\", "\x00\x01\x02", "ÿÿÿÿ", "9" * 64]
#: Binary values for US/SS (two bytes each, little endian) and broken lengths.
BINARY_VALUES = [None, b"", b"\x00\x00", b"\x01\x00", b"\xff\xff", b"\x00\x80", b"\x08\x00", b"\x0c\x00",
                 b"\x01", b"\x00\x00\x00\x00"]

#: NIfTI header fields mutated, with the values tried.
NIFTI_FIELDS = {
    "pixdim1": [0.0, -3.0, np.nan, np.inf, 1e9, 1e-9], "pixdim2": [0.0, -3.0, np.nan, np.inf, 1e9, 1e-9],
    "pixdim3": [0.0, -3.0, np.nan, np.inf, 1e9, 1e-9],
    "scl_slope": [0.0, np.nan, np.inf, 1e9, -1.0, 1e-9], "scl_inter": [np.nan, np.inf, 1e9, -1e9],
    "qform_code": [0, 1, 2, 5, 255], "sform_code": [0, 1, 2, 5, 255],
    "srow_x": [[0, 0, 0, 0], [np.nan] * 4, [1e9, 0, 0, 0], [-3, 0, 0, 0]],
    "srow_z": [[0, 0, 0, 0], [np.nan] * 4, [0, 0, -3, 0], [0, 0, 1e9, 0]],
    "quatern_b": [np.nan, 2.0, 1.0], "quatern_d": [np.nan, 2.0, 1.0],
    "xyzt_units": [0, 1, 3, 255], "datatype": [2, 16, 64, 512, 0], "bitpix": [8, 64, 0],
    "vox_offset": [0.0, 10.0, 1e9], "dim0": [2, 4, 8, 0], "dim3": [0, 1, 2000],
    "intent_code": [1, 1007], "magic": [b"n+2\x00", b"xxxx"],
}


@dataclass
class Variant:
    """One mutation: where (``dicom``/``nifti``), what, the value, and for DICOM whether every slice."""

    kind: str
    name: str
    value: object
    every_slice: bool = False

    def label(self) -> str:
        scope = (" (every slice)" if self.every_slice else " (one slice)") if self.kind == "dicom" else ""
        return f"{self.kind} {self.name}={self.value!r}{scope}"


def draw_variants(n: int, seed: int = 17) -> list[Variant]:
    """``n`` seeded variants, about two thirds DICOM and one third NIfTI."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 < 2:
            tag, vr, name = rng.choice(DICOM_ATTRIBUTES)
            value = rng.choice(BINARY_VALUES if vr in ("US", "SS") else TEXT_VALUES)
            out.append(Variant("dicom", name, value, every_slice=rng.random() < 0.5))
        else:
            name = rng.choice(sorted(NIFTI_FIELDS))
            out.append(Variant("nifti", name, rng.choice(NIFTI_FIELDS[name])))
    return out


def _set_raw(ds, tag: int, vr: str, value) -> None:
    """Write ``value`` as the raw bytes of ``tag`` (past pydicom's checks, as a broken writer does); None deletes."""
    if value is None:
        if Tag(tag) in ds:
            del ds[Tag(tag)]
        return
    raw = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
    if vr not in ("US", "SS") and len(raw) % 2:
        raw += b" "
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


def mutate_dicom(src: Path, dst: Path, variant: Variant) -> None:
    """Write the series ``src`` into ``dst`` with ``variant`` applied (to the middle slice or to every slice)."""
    tag, vr, _ = next(a for a in DICOM_ATTRIBUTES if a[2] == variant.name)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link)  # hard links: only the mutated files are written
    files = sorted(f for f in dst.iterdir() if f.suffix == ".dcm")
    for f in files if variant.every_slice else [files[len(files) // 2]]:
        ds = pydicom.dcmread(src / f.name)
        _set_raw(ds, tag, vr, variant.value)
        f.unlink()  # a new file, not the source's inode
        ds.save_as(f)


def mutate_nifti(src: Path, dst: Path, variant: Variant) -> None:
    """Write the NIfTI ``src`` to ``dst`` with one header field changed (the voxels untouched)."""
    import gzip

    import nibabel as nib

    data = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(data[:348]))
    raw = header.binaryblock
    hdr = np.frombuffer(raw, dtype=header.structarr.dtype).copy()
    name, value = variant.name, variant.value
    if name.startswith("pixdim"):
        hdr["pixdim"][0][int(name[-1])] = value
    elif name.startswith("dim"):
        hdr["dim"][0][int(name[-1])] = value
    elif name == "magic":
        hdr["magic"] = value
    else:
        hdr[name] = value
    body = hdr.tobytes() + data[348:]
    dst.write_bytes(gzip.compress(body, compresslevel=1) if dst.suffix == ".gz" else body)


def _input_facts(ct) -> tuple:
    """What the analysis reads from a CT besides its voxels: geometry and the acquisition facts it uses."""
    i = ct.info
    return (ct.hu.shape, np.round(ct.grid.spacing_mm, 6).tolist(), np.round(ct.grid.origin_lps_mm, 4).tolist(),
            np.round(np.asarray(ct.grid.direction), 6).tolist(), i.kvp, i.contrast_agent, i.slice_thickness_mm,
            i.convolution_kernel)


def _answer(res) -> dict:
    """The answer a user reads: each level's BMD (None where not measured) and the patient's category."""
    return {"levels": res.bmd_mg_cm3(), "category": res.patient.category}


def _same(a: dict, b: dict) -> bool:
    if a["category"] != b["category"] or set(a["levels"]) != set(b["levels"]):
        return False
    for k, v in a["levels"].items():
        w = b["levels"][k]
        if (v is None) != (w is None) or (v is not None and abs(v - w) > BMD_TOL_MG_CM3):
            return False
    return True


def run_fuzz(n: int, workdir: Path, dicom_src: Path, nifti_src: Path, seed: int = 17,
             log=lambda line: None) -> tuple[Counter, list[str]]:
    """Read and, where needed, analyse ``n`` variants of ``dicom_src`` (a series folder) and ``nifti_src``.

    Returns
    -------
    counts : Counter
        Outcome -> number of variants (see the module docstring).
    failures : list of str
        One line per ``internal`` or ``silent`` variant.
    """
    from ctbmd.errors import CtbmdError
    from ctbmd.io import read_ct
    from ctbmd.pipeline import analyse

    workdir.mkdir(parents=True, exist_ok=True)
    base = {}
    for kind, src in (("dicom", dicom_src), ("nifti", nifti_src)):
        ct = read_ct(src)
        base[kind] = (ct, _input_facts(ct), _answer(analyse(ct)))
    counts, failures = Counter(), []
    for i, v in enumerate(draw_variants(n, seed)):
        dst = workdir / ("series" if v.kind == "dicom" else "ct.nii.gz")
        try:
            (mutate_dicom if v.kind == "dicom" else mutate_nifti)(dicom_src if v.kind == "dicom" else nifti_src,
                                                                   dst, v)
        except (ValueError, OverflowError, TypeError):
            counts["not_writable"] += 1  # the value cannot be put in this field at all (e.g. NaN in an int)
            continue
        ct0, facts0, answer0 = base[v.kind]
        outcome, detail = "", ""
        try:
            ct = read_ct(dst)
            if _input_facts(ct) == facts0 and np.array_equal(ct.hu, ct0.hu):
                outcome = "same_input"
            else:
                res = analyse(ct)
                answer = _answer(res)
                if _same(answer, answer0):
                    outcome = "same_answer"
                elif any(v.name.lower() in w.lower() for w in res.warnings):
                    outcome = "changed_said"
                else:
                    outcome, detail = "silent", f"{answer0} -> {answer}; warnings {list(res.warnings)}"
        except CtbmdError as exc:
            line = exc.one_line()
            outcome = "refused" if "\n" not in line else "internal"
            detail = line
        except Exception as exc:  # noqa: BLE001 - what the fuzzing looks for
            outcome, detail = "internal", f"{type(exc).__name__}: {exc}"
        counts[outcome] += 1
        if outcome in ("internal", "silent"):
            failures.append(f"{v.label()}: {outcome}: {str(detail)[:300]}")
        log(f"{i:4d} {v.label()[:70]:70s} {outcome} {str(detail)[:120]}")
    return counts, failures


if __name__ == "__main__":  # python tests/fuzz_headers.py [N] [WORKDIR]
    import subprocess
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="ctbmd-fuzz-"))
    phantom = work / "phantom"
    if not (phantom / "dicom").exists():
        for extra in (["--dicom"], []):
            subprocess.run([sys.executable, "-c", "from ctbmd.cli import main; main()", "simulate", "--out",
                            str(phantom / extra[0][2:] if extra else phantom / "nifti"), "--pixel", "2", "--slice",
                            "3", "--seed", "7", *extra], check=True, capture_output=True)
    counts, failures = run_fuzz(n, work / "variants", phantom / "dicom" / "ct", phantom / "nifti" / "ct.nii.gz",
                                log=print)
    print(json.dumps(dict(counts), indent=1))
    print("\n".join(failures) or "no failures")
