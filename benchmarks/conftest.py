from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def pytest_configure(config: pytest.Config) -> None:
    from pairline.logs import configure

    configure("warning", json=True)
