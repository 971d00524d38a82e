import json
import subprocess
import sys

import pytest

from reagent_recsys.artifacts import atomic_directory, read_manifest, write_json_atomic


def test_atomic_directory_replaces_only_on_success(tmp_path):
    final = tmp_path / "table"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("killed mid-write")
    assert (final / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["table"]


def test_killed_writer_leftovers_are_removed_by_the_next_writer(tmp_path):
    final = tmp_path / "table"
    # A real process that dies without cleanup (os._exit skips finally blocks, like SIGKILL).
    code = (
        "import os, sys; from reagent_recsys.artifacts import atomic_directory\n"
        f"with atomic_directory({str(final)!r}) as tmp:\n"
        "    (tmp / 'part').write_text('x'); os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert any(p.name.startswith(".table.tmp-") for p in tmp_path.iterdir())
    with atomic_directory(final) as tmp:
        (tmp / "part").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table"]


def test_write_json_atomic_and_manifest(tmp_path):
    write_json_atomic(tmp_path / "t" / "_manifest.json", {"rows": 3})
    assert read_manifest(tmp_path / "t") == {"rows": 3}
    assert json.loads((tmp_path / "t" / "_manifest.json").read_text())["rows"] == 3
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        read_manifest(tmp_path / "missing")
