"""RobustCheckpointer: a broken checkpoint is named and skipped, not fatal.

Each case first shows SpeechBrain's own ``Checkpointer`` failing (the reason
our subclass exists: if SpeechBrain fixes it, that assertion fails and the
subclass can go), then ours recovering from the last good checkpoint.
"""

import logging
import sys

import pytest
import torch
from helpers import requires_mount, run_in_namespace
from sb_urbansound.errors import UserError
from sb_urbansound.training.checkpoints import BROKEN_PREFIX, RobustCheckpointer

from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.checkpoints import Checkpointer


def make(cls, folder):
    torch.manual_seed(0)
    modules = {"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)}
    return cls(folder, recoverables=modules), modules


def two_checkpoints(folder):
    """A good checkpoint (error 0.5), then a better one (error 0.4)."""
    ckpt, modules = make(RobustCheckpointer, folder)
    good = ckpt.save_checkpoint(meta={"error": 0.5})
    weights = modules["a"].weight.detach().clone()
    with torch.no_grad():
        modules["a"].weight.add_(1.0)
    best = ckpt.save_checkpoint(meta={"error": 0.4})
    return good, best, weights


def save_and_die(ckpt, monkeypatch, meta):
    """Save a checkpoint that "dies" (KeyboardInterrupt, as a SIGTERM raises
    it) after its first parameter file is written."""
    real_save = sb_checkpoints.torch_save
    calls = []

    def dying_save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(obj, path)

    with monkeypatch.context() as m:
        m.setitem(
            sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, dying_save
        )
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(meta=meta)


def test_a_save_stopped_half_way_leaves_no_checkpoint(tmp_path, monkeypatch):
    # SpeechBrain's Checkpointer leaves the half-written one, then fails on it
    theirs, _ = make(Checkpointer, tmp_path / "theirs")
    save_and_die(theirs, monkeypatch, {"step": 1})
    theirs, _ = make(Checkpointer, tmp_path / "theirs")
    with pytest.raises((KeyError, RuntimeError)):  # SpeechBrain 1.1.2: KeyError
        theirs.recover_if_possible()

    # Ours: a run stopped in its first save starts afresh (CI once stopped a
    # run 0.09 s into its first epoch, in the save, and the rerun refused)
    ckpt, modules = make(RobustCheckpointer, tmp_path / "ours")
    save_and_die(ckpt, monkeypatch, {"step": 1})
    ours, _ = make(RobustCheckpointer, tmp_path / "ours")
    assert ours.recover_if_possible() is None
    assert [p.name for p in (tmp_path / "ours").iterdir()] == []

    # ... and one stopped in a later save resumes from the one before
    first = ours.save_checkpoint(meta={"step": 1})
    weights = modules["a"].weight.detach().clone()
    with torch.no_grad():
        modules["a"].weight.add_(1.0)
    save_and_die(ours, monkeypatch, {"step": 2})
    again, fresh = make(RobustCheckpointer, tmp_path / "ours")
    assert again.recover_if_possible().meta["step"] == 1
    assert torch.equal(fresh["a"].weight, weights)
    assert [p.name for p in (tmp_path / "ours").iterdir()] == [first.path.name]


def test_two_saves_in_one_second_get_two_folders(tmp_path):
    ckpt, _ = make(RobustCheckpointer, tmp_path)
    saved = [ckpt.save_checkpoint(meta={"step": i}) for i in range(3)]
    assert len({c.path for c in saved}) == 3
    assert all((c.path / "a.ckpt").is_file() for c in saved)
    found = sorted(c.meta["step"] for c in ckpt.list_checkpoints())
    assert found == [0, 1, 2]


def test_truncated_parameter_file(tmp_path, caplog):
    good, best, weights = two_checkpoints(tmp_path)
    (best.path / "a.ckpt").write_bytes(b"PK\x03\x04 truncated")

    theirs, _ = make(Checkpointer, tmp_path)
    with pytest.raises(Exception):  # noqa: B017 (torch.load's own error)
        theirs.recover_if_possible(min_key="error")

    ours, fresh = make(RobustCheckpointer, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert ours.recover_if_possible(min_key="error").path == good.path
    assert str(best.path) in caplog.text and "does not load" in caplog.text
    assert torch.equal(fresh["a"].weight, weights)
    assert (tmp_path / (BROKEN_PREFIX + best.path.name)).is_dir()


def test_unreadable_meta_file(tmp_path):
    good, best, _ = two_checkpoints(tmp_path)
    (best.path / "CKPT.yaml").write_text("error: [0.4\n")  # cut mid-write

    theirs, _ = make(Checkpointer, tmp_path)
    with pytest.raises(Exception):  # noqa: B017 (a YAML parser error)
        theirs.recover_if_possible(min_key="error")

    ours, _ = make(RobustCheckpointer, tmp_path)
    assert ours.recover_if_possible(min_key="error").path == good.path


def test_no_checkpoint_loads(tmp_path):
    good, best, _ = two_checkpoints(tmp_path)
    for ckpt in (good, best):
        (ckpt.path / "b.ckpt").write_bytes(b"")
    ours, _ = make(RobustCheckpointer, tmp_path)
    with pytest.raises(UserError, match="none of the 2 checkpoint"):
        ours.recover_if_possible()


def test_leftover_of_interrupted_delete_removed(tmp_path):
    good, best, _ = two_checkpoints(tmp_path)
    (best.path / "CKPT.yaml").unlink()  # rmtree stopped half-way
    ours, _ = make(RobustCheckpointer, tmp_path)
    assert not best.path.exists()
    assert [c.path for c in ours.list_checkpoints()] == [good.path]


def test_disk_full_is_named(tmp_path, monkeypatch):
    ckpt, _ = make(RobustCheckpointer, tmp_path)
    good = ckpt.save_checkpoint(meta={"step": 1})

    def full_disk(obj, path):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos "
            "64 vs 0: basic_ios::clear: iostream error"
        )

    monkeypatch.setitem(
        sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, full_disk
    )
    with pytest.raises(UserError, match="no space left") as info:
        ckpt.save_checkpoint(meta={"step": 2})
    assert str(tmp_path) in str(info.value)
    # The half-written checkpoint is gone: the next run resumes from the last
    assert [c.path for c in ckpt.list_checkpoints()] == [good.path]


FULL_DISK_SAVE = """
import sys
import torch
from sb_urbansound.training.checkpoints import RobustCheckpointer
from sb_urbansound.errors import UserError
model = torch.nn.Linear(1, 200_000)  # 1.6 MB of weights
ckpt = RobustCheckpointer(sys.argv[1], recoverables={"model": model})
try:
    ckpt.save_checkpoint(meta={"step": 1})
except UserError as e:
    print(e)
    sys.exit(3)
"""


@requires_mount
def test_a_really_full_disk_is_named(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    result = run_in_namespace(
        f"mount -t tmpfs -o size=512k tmpfs {disk}",
        [sys.executable, "-c", FULL_DISK_SAVE, str(disk / "save")],
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "no space left" in result.stdout
    assert str(disk / "save") in result.stdout


def test_a_link_named_like_a_checkpoint_is_not_loaded_or_deleted(tmp_path):
    """A ``CKPT+...`` link (to another run's checkpoint, or to a folder of
    the user's) is not ours: it is neither recovered from nor removed."""
    other = tmp_path / "other"
    _, best, _ = two_checkpoints(other)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    run = tmp_path / "run"
    run.mkdir()
    (run / best.path.name).symlink_to(best.path)
    (run / "CKPT+2000-01-01+00-00-00+00").symlink_to(mine)
    ours, _ = make(RobustCheckpointer, run)
    assert ours.list_checkpoints() == []
    assert ours.recover_if_possible() is None
    assert (mine / "notes.txt").read_text() == "my notes"
