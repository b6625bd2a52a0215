"""Make the collection importable as ansible_collections.p3.recovery for the unit tests.

The repository root is the collection root, so a symlink <state>/ansible_collections/p3/recovery -> root, with
<state> on sys.path, is all the plain import machinery needs (ansible_collections and p3 are namespace packages).
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_BASE = os.path.join(ROOT, ".state", "unit-path")
_LINK = os.path.join(_BASE, "ansible_collections", "p3", "recovery")

if not os.path.islink(_LINK) or os.path.realpath(_LINK) != os.path.realpath(ROOT):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    if os.path.lexists(_LINK):
        os.remove(_LINK)
    os.symlink(ROOT, _LINK)
if _BASE not in sys.path:
    sys.path.insert(0, _BASE)
