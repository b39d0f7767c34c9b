"""Owner tags in temporary names: a dead process's leftovers are removed, a live one's never."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddn.leftovers import is_stale, owner_tag, remove_stale, tagged

PREFIX = "ddn-test-"
PRINT_TAG = f"from ddn.leftovers import tagged; print(tagged({PREFIX!r}), flush=True)"


def tag_of_exited_process() -> str:
    out = subprocess.run([sys.executable, "-c", PRINT_TAG], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_dead_owner_is_stale_live_owner_is_not(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", PRINT_TAG + "; import time; time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        live_prefix = live.stdout.readline().strip()
        dead_prefix = tag_of_exited_process()
        pid, start = owner_tag().split("-")
        reused_pid = f"{PREFIX}{pid}-{int(start) - 1}-"  # this pid, but a process that started earlier
        (tmp_path / f"{dead_prefix}folder").mkdir()
        (tmp_path / f"{dead_prefix}folder" / "inside").write_text("x")
        for name in (f"{dead_prefix}file", f"{reused_pid}file", f"{live_prefix}file", f"{tagged(PREFIX)}file",
                     f"{PREFIX}untagged", "other-123-456-file"):
            (tmp_path / name).write_text("x")
        (tmp_path / f"{dead_prefix}link").symlink_to(tmp_path / "other-123-456-file")

        removed = remove_stale(tmp_path, PREFIX)

        assert sorted(p.name for p in removed) == sorted(
            [f"{dead_prefix}folder", f"{dead_prefix}file", f"{dead_prefix}link", f"{reused_pid}file"])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"{live_prefix}file", f"{tagged(PREFIX)}file", f"{PREFIX}untagged", "other-123-456-file"])
    finally:
        live.kill()
        live.wait()


def test_another_users_leftover_is_kept(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = tmp_path / f"{tag_of_exited_process()}file"
    path.write_text("x")
    os.chown(path, 65534, 65534)
    assert not is_stale(path, PREFIX) and remove_stale(tmp_path, PREFIX) == [] and path.exists()


def test_missing_folder_has_nothing_to_remove(tmp_path: Path) -> None:
    assert remove_stale(tmp_path / "missing", PREFIX) == []
