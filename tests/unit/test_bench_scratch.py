"""Benchmark scratch folders are set aside after a run and deleted only between scenarios.

Deleting thousands of files right before the next measured run made that run slower on ext4
without a journal (see ``Context.empty_trash``); this checks the bookkeeping, not the timing.
"""

from __future__ import annotations

from pathlib import Path

from bench.datasets import Store, profile_named
from bench.scenarios.base import Context


def _context(tmp_path: Path) -> Context:
    profile = profile_named("smoke")
    return Context(store=Store(tmp_path / "data", profile), profile=profile, work_root=tmp_path)


def test_a_finished_run_is_set_aside_and_deleted_with_the_trash(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    for round_ in range(2):  # the same label again: a fresh, empty folder each time
        with ctx.scratch("cstore-gateway") as folder:
            assert list(folder.iterdir()) == []
            (folder / "spool.dcm").write_bytes(b"x" * round_)
        assert not folder.exists()
    assert len(ctx.trash) == 2
    assert all((aside / "spool.dcm").is_file() for aside in ctx.trash)
    ctx.empty_trash()
    assert ctx.trash == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_persistent_folders_go_to_the_trash_when_the_stack_closes(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    with ctx.stack:
        folder = ctx.persistent("qido-orthanc")
        (folder / "index").write_text("seeded")
    assert not folder.exists()
    assert [(aside / "index").read_text() for aside in ctx.trash] == ["seeded"]
    ctx.empty_trash()
    assert not any(tmp_path.iterdir())
