"""One error style for every command-line program (train, export, convert, probe, prepare).

A command that cannot do its job prints one line, `error: <what went wrong>`, naming the file, the
field or the step, to stderr and exits with status 1 (2 for a usage error caught by argparse).
`--debug` re-raises instead, so the full traceback is still there when it is needed.
docs/errors.md lists what each command does with bad input.

One spelling: multi-word flags are written with hyphens (`--noise-snr`, `--dry-run`) and every
command also takes them with underscores (`--noise_snr`, `--dry_run`); `--config.FIELD` overrides
of `train` name config fields exactly as the config spells them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

DEBUG_HELP = "On an error, show the full traceback instead of one line."
CONVENTIONS = ("Multi-word flags take '-' or '_' alike (--dry-run = --dry_run). A failure prints "
               "one 'error: ...' line and exits 1; --debug shows the traceback.")
MAX_CHARS = 1000  # A library's message can embed whole specs; the first line, cut here, is enough.


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def normalise_flags(argv: list[str], joiner: str) -> list[str]:
    """Flag names spelled with `joiner` ("-" for argparse, "_" for absl) whichever of '-' and '_'
    was typed; values, `--config.*` overrides and everything after a bare `--` are untouched."""
    other = "_" if joiner == "-" else "-"
    out = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[index:])
        if arg.startswith("--") and not arg.startswith("--config."):
            name, equals, value = arg[2:].partition("=")
            arg = "--" + name.replace(other, joiner) + equals + value
        out.append(arg)
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error names the option otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with this project's conventions: `--debug`, hyphen or underscore spellings of
    every flag, and both stated at the end of --help."""

    def __init__(self, prog: str, description: str, epilog: str | None = None, **kwargs):
        super().__init__(prog=prog, description=description,
                         epilog=f"{epilog}\n\n{CONVENTIONS}" if epilog else CONVENTIONS, **kwargs)
        add_debug_flag(self)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(normalise_flags(args, "-"), namespace)


def message(error: BaseException) -> str:
    """The error as one line: its first non-empty line (all of it for errors that list details
    on purpose, marked `multiline = True`), cut to MAX_CHARS."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    if getattr(error, "multiline", False):
        return text
    first = next(line.strip() for line in text.splitlines() if line.strip())
    if isinstance(error, (OSError, KeyError, AttributeError)) and not first.startswith(
            type(error).__name__):
        first = f"{type(error).__name__}: {first}"  # "[Errno 2] ..." alone says too little.
    return first if len(first) <= MAX_CHARS else first[:MAX_CHARS] + " ..."


def fail(error: BaseException | str, status: int = 1, hard_exit: bool = False) -> None:
    """Print `error: ...` to stderr and exit with `status`.

    hard_exit: leave with os._exit once the line is out, skipping interpreter shutdown, where
    background I/O libraries (Orbax, TensorStore) would otherwise bury the line under warnings
    about the coroutines the error left pending. Only for a program's last act, after its own
    files are closed (the training loop's context managers have finished their saves by then).
    """
    sys.stdout.flush()
    print(f"error: {message(error) if isinstance(error, BaseException) else error}",
          file=sys.stderr, flush=True)
    if hard_exit:
        os._exit(status)
    raise SystemExit(status)


@contextlib.contextmanager
def reported_errors(debug: bool = False, hard_exit=False):
    """Inside this block an exception ends the program with `error: <one line>` (exit 1), or,
    with debug, propagates with its traceback. SystemExit and KeyboardInterrupt pass through.
    hard_exit: see `fail`; a callable is asked at the time of the error."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every failure ends the same way.
        if debug:
            raise
        fail(error, hard_exit=hard_exit() if callable(hard_exit) else hard_exit)
