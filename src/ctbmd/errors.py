"""Errors raised by ctbmd, each tied to one documented CLI exit code.

Every error carries the offending path and a one-line reason, so the CLI can
print ``ctbmd: error: <path>: <reason>`` without a traceback (the style of
pydicom's ``InvalidDicomError``).

Exit codes (also in the README):

====  ==========================================================
0     success
2     bad usage (unknown option, missing argument, conflicting options)
3     unreadable or invalid input (missing, corrupt, not CT, too few
      slices, slice gaps, gantry tilt, constant image)
4     no spine in view, or no vertebral level could be identified
5     internal error (a bug: please report it)
6     ``ctbmd batch`` finished, but some scans failed (see its ``failed.csv``)
7     ``ctbmd pacs``: the PACS cannot be reached (connection refused, timeout,
      not an Orthanc REST API at that URL)
8     ``ctbmd pacs``: no series with that SeriesInstanceUID on the PACS
9     ``ctbmd pacs``: the PACS refused the request (credentials, or no right
      to store); nothing was pushed
====  ==========================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Mapping

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INVALID_INPUT = 3
EXIT_NO_SPINE = 4
EXIT_INTERNAL = 5
EXIT_BATCH_FAILURES = 6
EXIT_PACS_UNREACHABLE = 7
EXIT_PACS_NOT_FOUND = 8
EXIT_PACS_REFUSED = 9


#: Flags whose name is not their parameter's ``--name-with-dashes`` (:func:`parameter_text`, style ``cli``).
CLI_FLAGS = {"mapping": "--map", "field_name": "--field", "n_boot": "--bootstrap", "slice_mm": "--slice",
             "pixel_mm": "--pixel", "psf_mm": "--psf", "out_dir": "--out"}

#: A parameter named in an error's reason: ```name``` (a Python identifier between backticks).
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def parameter_text(reason: str, style: Literal["python", "cli"] = "python",
                   flags: Mapping[str, str] | None = None) -> str:
    """Write the parameters named in ``reason`` as Python names or as command-line flags.

    Library code names a parameter between backticks, by its Python name (```label_map```), so the
    same error reads right from the Python API (``label_map``) and from the CLI (``--label-map``).

    Parameters
    ----------
    reason : str
        The text, with parameters between backticks.
    style : {"python", "cli"}
        ``python`` drops the backticks; ``cli`` writes ``--name-with-dashes``.
    flags : mapping of str to str, optional
        Flags whose name is not the parameter's (``{"mapping": "--map"}``), for ``style="cli"``;
        :data:`CLI_FLAGS` by default.

    Returns
    -------
    str
    """
    if style == "python":
        return _PARAMETER.sub(r"\1", reason)
    flags = CLI_FLAGS if flags is None else flags
    return _PARAMETER.sub(lambda m: flags.get(m[1], "--" + m[1].replace("_", "-")), reason)


class CtbmdError(Exception):
    """Base class of all expected ctbmd failures.

    Parameters
    ----------
    reason : str
        One line saying what is wrong, in the user's terms. A parameter of the call is named by its Python
        name between backticks (```levels```): ``str(error)`` shows ``levels``, the CLI ``--levels``
        (:func:`parameter_text`).
    path : str or Path, optional
        The file or folder the reason is about.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(self.one_line())

    def one_line(self, style: Literal["python", "cli"] = "python", flags: Mapping[str, str] | None = None) -> str:
        """Return ``"<path>: <reason>"`` (or just the reason) on one line.

        Parameters
        ----------
        style : {"python", "cli"}
            How parameters named in the reason are written (:func:`parameter_text`).
        flags : mapping of str to str, optional
            Flags whose name is not the parameter's, for ``style="cli"``.
        """
        reason = parameter_text(self.reason, style, flags)
        text = reason if self.path is None else f"{self.path}: {reason}"
        return " ".join(text.split())


class UsageError(CtbmdError):
    """Bad command-line usage, e.g. ``--segmenter labels`` without ``--labels`` (exit 2)."""

    exit_code = EXIT_USAGE


class InvalidInputError(CtbmdError):
    """Input that cannot be read or is not a usable CT volume (exit 3)."""

    exit_code = EXIT_INVALID_INPUT


class NoSpineError(CtbmdError):
    """No spine in view, or no vertebral level can be identified (exit 4)."""

    exit_code = EXIT_NO_SPINE


class LabellingRefusedError(NoSpineError):
    """A spine is in view but its levels cannot be named with confidence (exit 4).

    ``labelling`` carries the evidence and the reason
    (:class:`ctbmd.types.LabellingRecord`), so a batch can record why.
    """

    def __init__(self, reason: str, path: str | Path | None = None, labelling=None):
        self.labelling = labelling
        super().__init__(reason, path)


class PacsUnreachableError(CtbmdError):
    """The PACS at the given URL cannot be reached or does not answer as Orthanc does (exit 7)."""

    exit_code = EXIT_PACS_UNREACHABLE


class SeriesNotFoundError(CtbmdError):
    """No series with the requested SeriesInstanceUID on the PACS (exit 8)."""

    exit_code = EXIT_PACS_NOT_FOUND


class PacsRefusedError(CtbmdError):
    """The PACS refused a request: bad credentials, or no right to store (exit 9)."""

    exit_code = EXIT_PACS_REFUSED


class BackendUnavailableError(UsageError):
    """An optional backend is missing (exit 2): TotalSegmentator or its weights, or PyTorch/MONAI for models."""


def require_optional(modules: tuple[str, ...], what: str, install: str, path: str | Path | None = None) -> None:
    """Raise :class:`BackendUnavailableError` when one of ``modules`` is not installed.

    Parameters
    ----------
    modules : tuple of str
        Modules to import, e.g. ``("torch", "monai")`` or ``("totalsegmentator.python_api",)``. Each is
        imported, not only looked up, so an installed package whose own imports fail counts as missing
        (it is named with the failure).
    what : str
        What needs them, in the user's terms (``"ctbmd batch"``).
    install : str
        The command that installs them (``"pip install 'ctbmd[batch]'"``).
    path : str or Path, optional
        Named in the error.

    Raises
    ------
    BackendUnavailableError
        A module is not installed, or its import fails (exit 2); the error names it and ``install``.
    """
    import importlib

    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            top = module.split(".")[0]
            broken = exc.name is not None and exc.name.split(".")[0] != top
            missing.append(f"{top} (which fails to import {exc.name})" if broken else top)
    if missing:
        raise BackendUnavailableError(f"{what} needs {', '.join(missing)}: {install}", path)
