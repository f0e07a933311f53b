"""Atomic writes: whole files with the usual permissions, nothing left on
failure."""

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


# ------------------------------------------- links planted in a store


def _user_file(tmp_path):
    mine = tmp_path / "mine" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    return mine


@pytest.mark.parametrize("what", ["file", "folder", "dangling", "fifo"])
def test_a_lock_file_that_is_a_link_is_refused(tmp_path, what):
    """``.lock`` -> a user's file: never opened, truncated or written (the
    lock writes its holder's pid); a folder, a missing target or a FIFO is
    refused with the same one line."""
    from sb_urbansound.atomic import FolderLock
    from sb_urbansound.errors import NotOursError

    mine = _user_file(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    lock = store / ".lock"
    if what == "fifo":
        os.mkfifo(lock)
    else:
        target = {
            "file": mine,
            "folder": mine.parent,
            "dangling": mine.parent / "new.txt",
        }[what]
        lock.symlink_to(target)
    with pytest.raises(NotOursError, match=r"\.lock is (a link|not a regular)"):
        FolderLock(store).acquire()
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"]


def test_a_marker_that_is_a_link_never_makes_a_folder_ours(tmp_path):
    """A marker linked to another store's marker: the folder of the user's
    files is neither deleted, replaced nor written into."""
    from sb_urbansound.atomic import (
        MARKER_FILE,
        claim_folder,
        make_temp_folder,
        mark_store,
        remove_store,
        replace_folder,
    )
    from sb_urbansound.errors import NotOursError

    real = mark_store(tmp_path / "real", "bank")
    mine = _user_file(tmp_path).parent
    (mine / MARKER_FILE).symlink_to(real / MARKER_FILE)
    with pytest.raises(NotOursError, match="left alone"):
        remove_store(mine, "bank")
    new = mark_store(make_temp_folder(tmp_path, "mine"), "bank")
    with pytest.raises(NotOursError, match="not replaced"):
        replace_folder(new, mine)
    with pytest.raises(NotOursError, match="notes.txt"):
        claim_folder(mine, "bank")
    assert (mine / "notes.txt").read_text() == "my notes"


def test_an_index_or_a_folds_results_are_never_read_through_a_link(tmp_path):
    """A store's index (what its data is) and a fold's results are read only
    from the store's own files."""
    from sb_urbansound.atomic import atomic_write_json, read_store_json
    from sb_urbansound.data.manifests import _up_to_date
    from sb_urbansound.errors import NotOursError
    from sb_urbansound.training.crossval import _read_json

    real = atomic_write_json(tmp_path / "real.json", {"accuracy": 1.0})
    link = tmp_path / "test_results.json"
    link.symlink_to(real)
    assert read_store_json(real) == {"accuracy": 1.0}
    assert read_store_json(link) is None
    with pytest.raises(NotOursError, match="test_results.json is a link"):
        _read_json(link)
    # manifests whose options file is a link are prepared again
    labels = atomic_write_json(tmp_path / "labels.json", ["a"])
    record = {"accuracy": 1.0}
    assert _up_to_date(real, record, [labels])
    assert not _up_to_date(link, record, [labels])


def test_a_run_folder_holding_a_link_to_a_file_is_refused(tmp_path):
    """SpeechBrain writes log.txt, env.log, hyperparams.yaml, train_log.txt
    by name: a link among them (to a user's file) stops the run before a
    byte goes through it; a link to a folder (a bank on another disk) is
    the user's layout and stays."""
    from sb_urbansound.errors import NotOursError
    from sb_urbansound.training.experiment import RunFolder

    mine = _user_file(tmp_path)
    out = tmp_path / "out"
    RunFolder(out).lock()
    (out / "bank").symlink_to(mine.parent)
    run = RunFolder(out)
    run.lock()
    run.unlock()
    (out / "log.txt").symlink_to(mine)
    with pytest.raises(NotOursError, match="log.txt is a link"):
        RunFolder(out).lock()
    assert mine.read_text() == "my notes"


def test_a_folder_of_another_kind_is_refused_naming_the_option(tmp_path):
    from sb_urbansound.atomic import NotOursError, claim_folder

    claim_folder(tmp_path / "run", "run")
    with pytest.raises(NotOursError, match="--output_folder=") as e:
        claim_folder(tmp_path / "run", "crossval")
    assert "is an sb-urbansound run folder" in str(e.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotOursError, match="--bank_folder="):
        claim_folder(tmp_path / "file", "banks", "bank_folder")
