"""One entry-point wrapper for every command: bad input ends in one line naming what is wrong.

Every `python -m processing...` command (and `run_summarization.py`) calls its `main` through
`run_command`::

    if __name__ == "__main__":
        sys.exit(run_command(main))

Rule for what is "bad input" (reported in one line, exit code `EXIT_BAD_INPUT`) rather than a bug
(full traceback, exit code 1):

* a `processing.errors.MMGLInputError`, the base of every error class of the project (reader,
  framing, page structure, embedding-cache, image and URL errors); its message names the file,
  record, page, section and field;
* a missing, unreadable or clashing file (`FileNotFoundError`, `FileExistsError`,
  `PermissionError`, `IsADirectoryError`, `NotADirectoryError`): the message holds the path;
* a full disk or quota (an `OSError` with `ENOSPC` / `EDQUOT` anywhere in the chain): reported as a
  `DiskFullError` (the path, the bytes needed when the writer knew them, the bytes free);
* a `ValueError`, `KeyError` or `TypeError` *raised by the project's own code*: the frame that
  raised it lies in a file of this project (`processing/`, `modeling_mmgl/` or a top-level
  script), i.e. it comes from our own validation, whose messages name what was expected. The same
  types raised deep inside torch, `datasets` or numpy are bugs or misuse we did not anticipate, and
  keep their traceback.

Exceptions raised inside `datasets` generation arrive wrapped (`DatasetGenerationError: An error
occurred while generating the dataset`): the chain (`__cause__`, then `__context__`) is
walked and the first bad-input error found is reported instead.

`--traceback` anywhere on the command line, or `MMGL_DEBUG=1` in the environment, re-raises the
error with its full traceback (not `--debug`: that is a `TrainingArguments` flag of
`run_summarization.py`). Commands declare the flag with `add_debug_argument` so that `--help`
documents it; `run_command` removes it before `main` parses the rest.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

#: Exit code of a command stopped by bad input (argparse uses 2 for bad usage too).
EXIT_BAD_INPUT = 2
#: Environment variable that shows full tracebacks, like `--traceback`.
DEBUG_ENV = "MMGL_DEBUG"
DEBUG_FLAG = "--traceback"

# Folders whose code raises "our own validation" errors (see the module docstring).
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PROJECT_DIRS = tuple(os.path.join(_PROJECT_ROOT, name) + os.sep for name in ("processing", "modeling_mmgl"))
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_VALIDATION_ERRORS = (ValueError, KeyError, TypeError)


def _raised_by_project(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is in a file of this project."""
    tb = exc.__traceback__
    if tb is None:  # e.g. re-created from a worker process: only the type is known
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if filename.startswith(_PROJECT_DIRS):
        return True
    return os.path.dirname(filename) == _PROJECT_ROOT  # run_summarization.py and other scripts


def find_bad_input(exc: BaseException) -> BaseException | None:
    """The first bad-input error in `exc`'s chain (`exc`, its `__cause__` or `__context__`, ...).

    Args:
        exc (`BaseException`): what a command raised.

    Returns:
        `BaseException` or `None`: the error to report in one line, or `None` for a bug.
    """
    from processing.atomic_write import DISK_FULL_ERRNOS, DiskFullError
    from processing.errors import MMGLInputError
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return DiskFullError(exc.filename or "a file")  # a writer that did not say more
        if isinstance(exc, (MMGLInputError, *_FILE_ERRORS)):
            return exc
        if isinstance(exc, _VALIDATION_ERRORS) and _raised_by_project(exc):
            return exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return None


def error_message(exc: BaseException) -> str:
    """The one-line text of `exc` (a `KeyError`'s message without the quotes `str()` adds)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    text = " ".join(text.split())  # one line, even for messages that wrap
    return text or type(exc).__name__


def add_debug_argument(parser) -> None:
    """Declare `--traceback` on an `argparse.ArgumentParser`, so that `--help` documents it."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )


def run_command(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's `main(argv)`; report bad input as `error: <message>` on stderr.

    Args:
        main (`Callable`): the command's entry point; takes a list of arguments, returns an exit
            code (`None` counts as 0).
        argv (`list[str]`, *optional*): the arguments; defaults to `sys.argv[1:]`.

    Returns:
        `int`: `main`'s exit code, or `EXIT_BAD_INPUT` after a bad-input error. Bugs (errors not
        covered by the rule in the module docstring) propagate with their traceback, as do
        `KeyboardInterrupt` and `SystemExit` (argparse's own usage errors exit 2 by themselves).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except Exception as exc:
        if debug:
            raise
        bad = find_bad_input(exc)
        if bad is None:
            raise
        print(f"error: {error_message(bad)}", file=sys.stderr)
        print(f"(run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the full traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0 if code is None else int(code)


__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "EXIT_BAD_INPUT",
    "add_debug_argument",
    "error_message",
    "find_bad_input",
    "run_command",
]
