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


@pytest.mark.parametrize(
    "load, workers, expected",
    [(0.3, 0, 2), (0.3, 1, 1), (1.2, 0, 1), (6.0, 0, 1)],
)
def test_cores_that_other_jobs_keep_busy_are_left_to_them(
    restore_threads, monkeypatch, load, workers, expected
):
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(hardware, "_DEFAULT_TORCH_THREADS", 4)
    assert hardware.set_torch_threads(workers, cores=2) == expected
    assert torch.get_num_threads() == expected


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
