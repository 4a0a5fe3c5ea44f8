"""ctbmd: opportunistic osteoporosis screening from routine CT.

Pipeline stages, one module each: :mod:`ctbmd.io` (read and validate CT),
:mod:`ctbmd.segment` (find and label vertebrae), :mod:`ctbmd.roi` (trabecular ROI
per vertebral body), :mod:`ctbmd.calibrate` (phantomless HU -> mg/cm3),
:mod:`ctbmd.classify` (ACR-QCT category, Pickhardt HU flags, contrast phase) and
:mod:`ctbmd.report` (result.json, levels.csv, NIfTI maps, report.png).
:mod:`ctbmd.pipeline` chains them; :mod:`ctbmd.cli` is the command line.

ctbmd is a research tool and not a medical device.
"""

#: The package version, read by the build from here (pyproject.toml); a literal, so importing
#: ctbmd does not pay for importlib.metadata.
__version__ = "0.1.0"

__all__ = ["__version__"]
