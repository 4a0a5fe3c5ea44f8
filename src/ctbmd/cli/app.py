"""The ``ctbmd`` typer application: its help layout, the closed sets of option values, logging and the
one-line error handler every command runs in (:func:`one_line_errors`)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Literal

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from ctbmd import __version__
from ctbmd.errors import CLI_FLAGS, EXIT_INTERNAL, CtbmdError

# The closed sets of option values, as typer choices: --help lists them, and a value outside one is a usage
# error (exit 2) that names them. They repeat the library's tuples named beside them, which cannot be
# imported here without numpy, SimpleITK or torch (a slow --help); tests/test_cli_help.py checks that they agree.
Segmenter = Literal["builtin", "labels", "totalsegmentator"]  # ctbmd.segment.SEGMENTERS
BatchSegmenter = Literal["builtin", "totalsegmentator"]  # label maps come from a batch manifest's labels column
LabelMap = Literal["auto", "total", "verse", "vertebrae_pp", "vertebrae_pp_refined"]  # segment.labelmaps.LABEL_MAPS
Phase = Literal["native", "arterial", "portal_venous"]  # ctbmd.simulate.PHASES
PhantomKvp = Literal[80, 100, 120, 140]  # ctbmd.simulate.KVP_CHOICES
TissueModel = Literal["realistic", "icru44"]  # ctbmd.simulate.TISSUE_MODELS
Fov = Literal["abdomen", "chest"]  # ctbmd.simulate.FOVS
RibPairs = Literal[11, 12, 13]  # ctbmd.simulate.RIB_PAIRS
Transition = Literal["none", "lumbarised_s1", "sacralised_l5"]  # ctbmd.simulate.TRANSITIONS
Sacrum = Literal["segmented", "simple"]  # ctbmd.simulate.SACRUM_STYLES
Arch = Literal["densenet121", "densenet_small", "resnet18", "resnet50"]  # ctbmd.model.nets.ARCHS
Dims = Literal["3d", "2d", "2.5d", "sagittal", "sagittal3"]  # ctbmd.model.nets.DIMS
Task = Literal["regression", "binary", "categories"]  # ctbmd.model.train.TASKS
Device = Literal["auto", "cpu", "cuda"]  # ctbmd.model.train.resolve_device
Protocol = Literal["li2024", "peng2024", "jcat2023", "yasaka2020", "huang2025"]  # ctbmd.model.protocols.PROTOCOLS


def tidy_help(command) -> None:
    """Make typer's help of ``command`` read cleanly: no value placeholder on flags (typer shows
    ``--quiet <bool>``), a choice as ``[native | arterial | portal_venous]`` (spaced, so that a narrow terminal
    wraps it between two choices, not inside one), and square brackets in help texts kept
    (``pip install 'ctbmd[dl]'``; Rich markup would take ``[dl]`` for a style and drop it)."""
    from rich.markup import escape

    rich = getattr(command, "rich_markup_mode", None) == "rich"
    if rich and command.help:
        command.help = escape(command.help)
    for param in command.params:
        if rich and getattr(param, "help", None):
            param.help = escape(param.help)
        if param.metavar is not None or param.param_type_name != "option":
            continue
        desc = getattr(param, "type_descriptor", None)
        if param.is_flag:
            param.metavar = ""
        elif desc is not None and desc.is_choice and desc.choices:
            param.metavar = "[" + " | ".join(str(c) for c in desc.choices) + "]"  # Literal values: str or int


def plain_help_option(option):
    """The ``--help`` option without typer's ``<bool>``."""
    if option is not None and option.metavar is None:
        option.metavar = ""
    return option


class Group(TyperGroup):
    """The ``ctbmd`` group, its help tidied as :func:`tidy_help` says."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        tidy_help(self)

    def get_help_option(self, ctx):
        return plain_help_option(super().get_help_option(ctx))


class Command(TyperCommand):
    """A command whose help reads like click's: ``Usage: ctbmd run [OPTIONS] INPUT`` (typer writes
    ``{input}``), ``[INPUTS]...`` for an optional list, and the rest as :func:`tidy_help` says."""

    def __init__(self, name, **kwargs) -> None:
        super().__init__(name, **kwargs)
        tidy_help(self)

    def get_help_option(self, ctx):
        return plain_help_option(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="ctbmd: vertebral BMD from routine CT (research use only, not a medical device).")
err = Console(stderr=True)


def configure_logging(debug: bool) -> None:
    """ctbmd's warnings on stderr; other libraries' messages and Python warnings (pydicom, nibabel,
    matplotlib, highdicom) only with ``--debug``, which also shows ctbmd's debug log (what the readers
    printed, :func:`ctbmd.io.quiet_libraries`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    logging.captureWarnings(True)
    if debug:
        logging.getLogger("ctbmd").setLevel(logging.DEBUG)
        return
    for handler in logging.getLogger().handlers:
        if not any(getattr(f, "__name__", "") == "_ctbmd_only" for f in handler.filters):
            def _ctbmd_only(record: logging.LogRecord) -> bool:
                return record.name.startswith("ctbmd") or record.levelno >= logging.ERROR

            handler.addFilter(_ctbmd_only)



@contextmanager
def one_line_errors(debug: bool = False):
    """Turn a :class:`CtbmdError` into ``ctbmd: error: <path>: <reason>`` and its exit code, and any
    other exception into one ``internal error`` line and exit code 5 (re-raised with ``debug``).
    Logging is set up first (:func:`configure_logging`)."""
    configure_logging(debug)
    try:
        yield
    except CtbmdError as exc:
        typer.echo(f"ctbmd: error: {exc.one_line('cli', CLI_FLAGS)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, distinct code
        if debug:
            raise
        detail = " ".join(str(exc).split())
        typer.echo(f"ctbmd: internal error: {type(exc).__name__}: {detail} (rerun with --debug and report it)", err=True)
        raise typer.Exit(EXIT_INTERNAL) from None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the ctbmd version and exit.")) -> None:
    """ctbmd: vertebral BMD from routine CT."""


