"""Fixtures the unit tests share: two judged runs saved to files (a baseline, then censored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import judged


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    """(baseline.json, run.json): the same small world judged honest, then censored."""
    base, now = tmp_path / "base.json", tmp_path / "run.json"
    base.write_text(judged(False, "2026-01-01T00:00:00Z").to_json())
    now.write_text(judged(True, "2026-01-02T00:00:00Z").to_json())
    return base, now
