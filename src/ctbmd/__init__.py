"""ctbmd: opportunistic osteoporosis screening from routine CT.

Pipeline stages, one module each: :mod:`ctbmd.io` (read and validate CT),
:mod:`ctbmd.segment` (find and label vertebrae), :mod:`ctbmd.roi` (trabecular ROI
per vertebral body), :mod:`ctbmd.calibrate` (phantomless HU -> mg/cm3),
:mod:`ctbmd.classify` (ACR-QCT category, Pickhardt HU flags, contrast phase) and
:mod:`ctbmd.report` (result.json, levels.csv, NIfTI maps, report.png).
:mod:`ctbmd.pipeline` chains them into a :class:`ctbmd.result.Result`.

The Python API (:mod:`ctbmd.api`), importable from here::

    import ctbmd
    res = ctbmd.analyse("ct.nii.gz")       # -> ctbmd.Result
    ctbmd.run("ct.nii.gz", "out/ct")        # the same, and writes the files of `ctbmd run`

:mod:`ctbmd.batch` runs cohorts (``ctbmd batch``); :mod:`ctbmd.cli` is the
command line.

ctbmd is a research tool and not a medical device.
"""

#: The package version, read by the build from here (pyproject.toml); a literal, so importing
#: ctbmd does not pay for importlib.metadata.
__version__ = "0.1.0"

#: Names :func:`__getattr__` imports from :mod:`ctbmd.api` on first use, so that ``import ctbmd``
#: (and the CLI's start) does not import numpy, SimpleITK and the stages.
_API = ("analyse", "run", "load_model", "Result")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """``ctbmd.analyse``, ``ctbmd.run``, ``ctbmd.load_model`` and ``ctbmd.Result``, imported lazily (PEP 562)."""
    if name in _API:
        from ctbmd import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctbmd' has no attribute {name!r}")
