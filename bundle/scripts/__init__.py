"""Custom code of the MOTFM bundle, imported by its configs as ``scripts.*``.

Importing it also makes a bad input the last thing a bundle command prints: MONAI wraps the bundle's errors in
``RuntimeError: Failed to evaluate ConfigExpression ...``, so after the traceback the original message of the
bundle's own error (a missing file, a bad datalist, a checkpoint that does not fit) is printed again as one line,
``error: ...``, and the command exits 1 as before.
"""

from __future__ import annotations

import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
_INPUT_ERRORS = (ValueError, FileNotFoundError)


def input_error(exc: BaseException | None) -> BaseException | None:
    """The first exception in ``exc``'s chain of causes that this bundle's code raised about its input."""
    while exc is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        if isinstance(exc, _INPUT_ERRORS) and frames and frames[-1].filename.startswith(_HERE):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _excepthook(kind, exc, tb) -> None:
    _previous_hook(kind, exc, tb)
    cause = input_error(exc)
    if cause is not None:
        print(f"error: {cause}", file=sys.stderr)


_previous_hook = sys.excepthook
sys.excepthook = _excepthook
