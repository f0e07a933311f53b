"""Tests of sb_urbansound.training.hardware: how many threads torch gets."""

import pytest
import torch
from sb_urbansound.training import hardware


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("workers, expected", [(0, 2), (1, 1), (3, 1)])
@pytest.mark.parametrize("load", [0.0, 1.2, 6.0])
def test_the_threads_follow_the_cores_and_workers_whatever_the_load(
    restore_threads, monkeypatch, caplog, load, workers, expected
):
    # The thread count orders torch's sums: one seed, one result, so the
    # load only earns a warning when more than one thread would wait.
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(hardware, "_DEFAULT_TORCH_THREADS", 4)
    with caplog.at_level("WARNING", logger=hardware.logger.name):
        assert hardware.set_torch_threads(workers, cores=2) == expected
    assert torch.get_num_threads() == expected
    warned = "OMP_NUM_THREADS=1" in caplog.text
    assert warned == (expected > 1 and load >= 1)


def test_omp_num_threads_wins_over_the_load(restore_threads, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert hardware.set_torch_threads(0, cores=2) == 1


def test_a_torchrun_process_without_its_gpu_is_stopped_in_one_line(
    monkeypatch,
):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(hardware.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(hardware.UserError) as e:
        hardware.check_device(None, "nccl")
    assert "--distributed_backend=gloo --device=cpu" in str(e.value)
    hardware.check_device("cpu", "gloo")  # gloo runs on CPUs
    monkeypatch.delenv("LOCAL_RANK")
    hardware.check_device(None, "nccl")  # not under torchrun
