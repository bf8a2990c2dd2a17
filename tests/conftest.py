"""Shared pytest setup.

``tests/`` is put on ``sys.path`` so that suites can ``import helpers_engine``
(the shared engine-test helpers) whatever pytest's import mode is.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
