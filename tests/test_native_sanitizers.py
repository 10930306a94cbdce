"""The native core and its Python binding under AddressSanitizer and UndefinedBehaviorSanitizer
(tests/native/sanitize.sh builds both with the sanitizers and plays them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "native" / "sanitize.sh"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (present on CI)")
def test_native_core_is_clean_under_asan_and_ubsan():
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "sanitizers: clean" in run.stdout
    assert "exercise: every call ran" in run.stdout
