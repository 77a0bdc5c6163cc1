"""``stack/stack.py`` (a script, not a package) loaded as a module, for tests that use or test
its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

STACK_PY = Path(__file__).resolve().parents[2] / "stack" / "stack.py"


def load_stack() -> ModuleType:
    """A fresh copy of the module each call (tests patch its globals)."""
    spec = importlib.util.spec_from_file_location("molam_stack_under_test", STACK_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
