"""Checks of the values an app's handlers receive: feature ids, scales, seeds, steps.

Why one module: every endpoint that takes a feature id, a scale or a slot id is also an API
(``gradio_client`` sends whatever its caller passes: ``"abc"``, ``1.5``, ``None``, ``1e9``). The
apps' number boxes and sliders hand the value over untouched
(:class:`saescope.apps.components.RawNumber`), and these functions either return it, converted,
or raise :class:`BadInput`, a ``gr.Error`` whose one-line message the visitor or API caller sees
instead of Gradio's generic "the upstream app raised an exception" (or a silent rounding).
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr


class BadInput(gr.Error):
    """A value an app cannot use, with the message to show (a ``gr.Error``, so a ValueError)."""

    def __init__(self, message: str, title: str = "Invalid input"):
        super().__init__(message, title=title, print_exception=False)

    def __str__(self) -> str:  # gr.Error's own __str__ is the repr (quoted)
        return self.message


def _shown(value: Any) -> str:
    """The value as the message quotes it: ``'1.5'``, ``'abc'``, ``nothing``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "nothing"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        text = str(int(value))  # 1e9 reads as 1000000000, not 1000000000.0
    else:
        text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _as_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is no number (booleans are not numbers:
    JSON ``true`` must not become feature 1)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _bounds(lo: float | None, hi: float | None, fmt) -> str:
    if lo is not None and hi is not None:
        return f" between {fmt(lo)} and {fmt(hi)}"
    if lo is not None:
        return f" >= {fmt(lo)}"
    if hi is not None:
        return f" <= {fmt(hi)}"
    return ""


def whole_number(
    value: Any, what: str, lo: int | None = None, hi: int | None = None, title: str | None = None
) -> int:
    """``value`` as an int in ``[lo, hi]``; else :class:`BadInput` ("WHAT must be a whole number
    between LO and HI, got '1.5'"). Numeric strings ("12") are accepted, 12.0 is 12."""
    x = _as_number(value)
    ok = x is not None and x.is_integer()
    ok = ok and (lo is None or x >= lo) and (hi is None or x <= hi)
    if not ok:
        raise BadInput(
            f"{what} must be a whole number{_bounds(lo, hi, str)}, got {_shown(value)}",
            title=title or "Invalid input",
        )
    return int(x)


def number_between(
    value: Any,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
    title: str | None = None,
) -> float:
    """``value`` as a float in ``[lo, hi]``; else :class:`BadInput` ("WHAT must be a number
    between LO and HI, got 'abc'")."""
    x = _as_number(value)
    if x is None or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise BadInput(
            f"{what} must be a number{_bounds(lo, hi, lambda v: f'{v:g}')}, got {_shown(value)}",
            title=title or "Invalid input",
        )
    return x


def feature_id(value: Any, d_sae: int, what: str = "feature id") -> int:
    """A feature id of an SAE with ``d_sae`` features: "feature id must be a whole number
    between 0 and 383, got '1.5'" otherwise."""
    return whole_number(value, what, 0, int(d_sae) - 1, title="Unknown feature")


def optional_feature_id(value: Any, d_sae: int, what: str = "feature id") -> int | None:
    """Like :func:`feature_id`, but an empty value (``None``, ``""``) is ``None``: an empty
    slot."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return feature_id(value, d_sae, what)


__all__ = [
    "BadInput",
    "feature_id",
    "number_between",
    "optional_feature_id",
    "whole_number",
]
