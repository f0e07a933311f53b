"""Several processes (torchrun, gloo, 2 CPU processes): validation and test
are split between them, each clip once, and give exactly the numbers of one
process; the test and the exported model are the same model."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, TINY_CNN_ARGS, US8K_CLASSES, make_urbansound_tree
from sb_urbansound.serving.classify import classify_files

# torchrun with two CPU processes, four times: minutes in all
pytestmark = pytest.mark.slow

SOURCES = {
    "bank": [],
    "per-clip": ["--data_source=files"],
    "shards": ["--data_source=shards", "--shard_size=4"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    # 5 classes x 3 clips: 15 test clips, an odd number for 2 processes;
    # test clips shorter than the 1 s window, so classify scores one window
    make_urbansound_tree(
        root,
        n_per_class_per_fold=3,
        folds=[1, 2, 3, 4],
        classes=US8K_CLASSES[:5],
        seconds=(0.4, 0.9),
    )
    return root


def command(data, out, extra, processes):
    launch = [sys.executable]
    if processes > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
    return [
        *launch,
        str(REPO / "train.py"),
        str(REPO / "hparams" / "cnn.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--number_of_epochs=3",
        "--noprogressbar",
        *[a for a in TINY_CNN_ARGS if not a.startswith("--batch_size")],
        "--batch_size=4",
        *extra,
        *(
            ["--distributed_backend=gloo", "--device=cpu"]
            if processes > 1
            else []
        ),
    ]


def run(cmd):
    result = subprocess.run(
        cmd,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@pytest.mark.parametrize("source", list(SOURCES))
def test_sharded_evaluation_equals_one_process(data, tmp_path, source):
    out = tmp_path / "out"
    # Trained and tested by 2 processes, each testing its share of the clips
    run(command(data, out, SOURCES[source], processes=2))
    sharded = json.loads((out / "test_results.json").read_text())
    assert sharded["n_clips"] == 15  # each clip once: none twice, none lost
    # The same checkpoint tested again by one process (the run is finished:
    # the same command trains nothing more)
    run(command(data, out, SOURCES[source], processes=1))
    alone = json.loads((out / "test_results.json").read_text())
    for key in ("accuracy", "per_class_accuracy", "confusion_matrix"):
        assert sharded[key] == alone[key], key
    # The shipped model is the tested one: classify agrees clip by clip
    # (the bank and the shards store int16, classify reads the files:
    # compared where the recipe reads the files itself)
    if source == "per-clip":
        manifest = json.loads((out / "manifests" / "test.json").read_text())
        found = classify_files(
            out / "model", [e["wav"] for e in manifest.values()], progress=False
        )
        labels = alone["labels"]
        matrix = [[0] * len(labels) for _ in labels]
        for entry, result in zip(manifest.values(), found):
            matrix[labels.index(entry["label"])][
                labels.index(result["label"])
            ] += 1
        assert matrix == alone["confusion_matrix"]


# torchrun's entry point for the next test: the recipe, where one of gloo's
# worker threads takes the GIL while the interpreter is torn down, as a late
# thread does on a loaded machine when it frees a tensor of the last
# collective (SpeechBrain's broadcast before the final barrier): rank 1's
# thread waits in a future's callback, without the GIL, until the teardown
# lets it go on.
GIL_AT_EXIT = """
import os, runpy, sys, threading, time
import torch
import torch.distributed as dist

released = threading.Event()
destroy = dist.destroy_process_group


def destroy_with_a_late_gloo_thread(*args, **kwargs):
    store = dist.distributed_c10d._get_default_store()
    message = torch.zeros(1)
    if dist.get_rank() == 0:
        store.wait(["gil_at_exit"])  # rank 1's callback is in place
        dist.broadcast(message, src=0)
    else:
        work = dist.broadcast(message, src=0, async_op=True)
        work.get_future().then(lambda _: released.wait())
        store.set("gil_at_exit", "1")
    destroy(*args, **kwargs)


class TornDown:
    # dropped with this module's globals, in the teardown
    sleep = staticmethod(time.sleep)

    def __del__(self):
        released.set()
        self.sleep(0.5)  # the gloo thread takes the GIL


torn_down = TornDown()
dist.destroy_process_group = destroy_with_a_late_gloo_thread
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_torchrun_run_ends_cleanly_when_gloo_takes_the_gil_at_exit(
    data, tmp_path
):
    # gloo's threads outlive destroy_process_group (DDP keeps the group); one
    # that took the GIL in the teardown ended the process with 'terminate
    # called without an active exception' (SIGABRT, torchrun exit 1), now and
    # then on a loaded machine, after the results were written
    shim = tmp_path / "gil_at_exit.py"
    shim.write_text(GIL_AT_EXIT)
    out = tmp_path / "out"
    cmd = command(data, out, ["--data_source=shards", "--shard_size=10"], 2)
    cmd.insert(cmd.index(str(REPO / "train.py")), str(shim))
    cmd[cmd.index("--number_of_epochs=3")] = "--number_of_epochs=1"
    result = run(cmd)
    assert "terminate called" not in result.stdout + result.stderr
    assert json.loads((out / "test_results.json").read_text())["n_clips"] == 15
