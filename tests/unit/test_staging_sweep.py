"""Leftovers in the staging folder (a crash mid-receive) are swept; files in use are not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.retention import sweep_staging


def test_only_files_untouched_for_longer_than_the_limit_are_removed(tmp_path: Path) -> None:
    old = tmp_path / "dimse-old.dcm"
    fresh = tmp_path / "dimse-fresh.dcm"
    folder = tmp_path / "not-a-file"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    folder.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(folder, (two_days_ago, two_days_ago))
    assert sweep_staging(tmp_path) == 1
    assert not old.exists() and fresh.exists() and folder.is_dir()
    assert sweep_staging(tmp_path / "missing") == 0  # logged, not raised
