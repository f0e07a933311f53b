"""A checkpoint interrupted while being written is never recovered."""

import pytest
import torch
from sb_urbansound.checkpoints import AtomicCheckpointer

from speechbrain.utils import checkpoints as sb_checkpoints


def test_interrupted_save_leaves_last_complete_checkpoint(
    tmp_path, monkeypatch
):
    model = torch.nn.Linear(3, 3)
    other = torch.nn.Linear(3, 3)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"a": model, "b": other})
    first = ckpt.save_checkpoint(meta={"step": 1})
    weights = model.weight.detach().clone()

    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = sb_checkpoints.torch_save
    calls = []

    def dying_save(obj, path):
        calls.append(path)
        if (
            len(calls) == 2
        ):  # the first file is written, then the process "dies"
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setitem(
        sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, dying_save
    )
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(meta={"step": 2})
    monkeypatch.undo()

    # A new run: the half-written checkpoint is invisible and cleaned up.
    fresh = torch.nn.Linear(3, 3)
    again = AtomicCheckpointer(
        tmp_path, recoverables={"a": fresh, "b": torch.nn.Linear(3, 3)}
    )
    assert [c.path for c in again.list_checkpoints()] == [first.path]
    assert again.recover_if_possible().meta["step"] == 1
    assert torch.equal(fresh.weight, weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]


def test_custom_name_saved_twice_is_replaced(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"m": model})
    ckpt.save_checkpoint(name="best", meta={"v": 1})
    saved = ckpt.save_checkpoint(name="best", meta={"v": 2})
    assert saved.path.name == "CKPT+best"
    assert [c.meta["v"] for c in ckpt.list_checkpoints()] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CKPT+best"]
