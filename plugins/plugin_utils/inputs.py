# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one input check of the roles (controller side, used by the <role>_input_errors filters).

A role's argument_specs give types and defaults; what they cannot say (ranges, a choice that depends on another
variable, a gate) is a rule here, and every bad value becomes ONE line naming the variable, its rule and the value
it got. input_errors(values, numbers=..., choices=...) returns those lines (empty: all fine).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import math


def number(value):
    """value as a float, or None when it is not a finite number (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(f) or math.isinf(f):
        return None
    return f


def fmt(value):
    """A value as the error line shows it: numbers plainly (5, 2.5), strings quoted ('lots'), the rest as str."""
    f = number(value)
    if f is None:
        return repr(value) if isinstance(value, str) else str(value)
    return ("%d" % f) if f.is_integer() else ("%g" % f)


def one_of(choices):
    """'a, b or c'."""
    choices = [str(c) for c in choices]
    return choices[0] if len(choices) == 1 else "%s or %s" % (", ".join(choices[:-1]), choices[-1])


def number_error(name, raw, kind="number", low=None, low_inclusive=True, high=None, unit=""):
    """The error line of one numeric variable, or None when raw is fine.

    kind: number or integer (a float with no fraction is an integer); low/high: bounds (None: none), low inclusive
    or not; unit: words after 'a number' (e.g. ' of seconds').
    """
    f = number(raw)
    bounds = []
    if low is not None:
        bounds.append("%s %s" % (">=" if low_inclusive else ">", fmt(low)))
    if high is not None:
        bounds.append("<= %s" % fmt(high))
    what = ("an integer" if kind == "integer" else "a number") + unit
    bad = f is None or (kind == "integer" and not f.is_integer())
    if not bad and low is not None:
        bad = f < low if low_inclusive else f <= low
    if not bad and high is not None:
        bad = f > high
    if not bad:
        return None
    return "%s must be %s%s, got %s" % (name, what, (" " + " and ".join(bounds)) if bounds else "", fmt(raw))


def input_errors(values, numbers=None, choices=None):
    """One line per bad variable: values maps names to values; numbers is a list of (name, kind, low,
    low_inclusive, high) rules, choices a list of (name, allowed values). A name absent from values is not checked."""
    errors = []
    for name, kind, low, low_inclusive, high in numbers or []:
        if name in values:
            err = number_error(name, values[name], kind, low, low_inclusive, high)
            if err:
                errors.append(err)
    for name, allowed in choices or []:
        if name in values and values[name] not in allowed:
            errors.append("%s must be %s, got %s" % (name, one_of(allowed), fmt(values[name])))
    return errors
