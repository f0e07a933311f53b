"""Atomic writes: whole files with the usual permissions, nothing left on failure."""

import os

import pytest
from sb_urbansound.atomic import atomic_write_json, atomic_write_text


def test_atomic_write_has_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_the_recipe_test_runners_files_do_not_make_a_run_folder_foreign(
    tmp_path,
):
    """SpeechBrain's run_recipe_tests writes its logs of the run and a pass
    flag into the output folder before the run starts: a run accepts them
    and leaves them alone; anything else is still refused."""
    from sb_urbansound.atomic import claim_folder, store_kind
    from sb_urbansound.errors import NotOursError

    out = tmp_path / "row_1"
    out.mkdir()
    for name in ("stdout.txt", "stderr.txt", ".passed"):
        (out / name).write_text("runner")
    assert store_kind(claim_folder(out, "run")) == "run"
    assert (out / "stdout.txt").read_text() == "runner"
    # Only a run's folder: a bank folder holding them is still foreign
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "stdout.txt").write_text("runner")
    with pytest.raises(NotOursError, match="stdout.txt"):
        claim_folder(bank, "bank")
    fresh = tmp_path / "row_2"
    fresh.mkdir()
    (fresh / "stdout.txt").write_text("runner")
    (fresh / "notes.txt").write_text("mine")
    with pytest.raises(NotOursError, match="notes.txt"):
        claim_folder(fresh, "run")
