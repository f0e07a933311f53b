"""Shards: the clips as the bank stores them, written once, read by rank in a
reproducible order with bounded memory, checked while read, and a recipe that
learns from them."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    TINY_CNN_ARGS,
    requires_mount,
    run_in_namespace,
    write_clip,
)
from sb_urbansound.data.audio import ClipConditioner
from sb_urbansound.data.bank import ClipBank
from sb_urbansound.data.shards import (
    Shards,
    ShardStream,
    deal_shards,
    read_shard,
)
from sb_urbansound.errors import DataPrepError, NotOursError

RATE = 8000


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        f"c{i:02d}": (
            str(
                write_clip(
                    root / f"c{i:02d}.wav",
                    class_idx=i % 3,
                    sample_rate=16000 if i % 2 else 44100,
                    channels=1 + i % 2,
                    seconds=0.2 + 0.05 * i,
                    seed=i,
                )
            ),
            f"class{i % 3}",
        )
        for i in range(20)
    }


@pytest.mark.parametrize(
    "fmt, channels", [("int16", 1), ("int16", 2), ("flac", 2)]
)
def test_shards_hold_what_the_bank_holds(tmp_path, clips, fmt, channels):
    cond = ClipConditioner(RATE, channels, 500)
    shards = Shards(tmp_path / "shards", cond, shard_size=6, fmt=fmt)
    index = shards.write({"train": clips}, progress=False)
    assert [s["clips"] for s in index["splits"]["train"]] == [6, 6, 6, 2]
    bank = ClipBank(tmp_path / "bank", cond)
    bank.build({k: p for k, (p, _) in clips.items()}, progress=False)
    seen = set()
    for shard in index["splits"]["train"]:
        for clip in read_shard(shards.folder / shard["name"], shard["sha256"]):
            row = bank.index[clip["id"]]
            assert clip["length"] == int(bank.lengths[row])
            assert clip["label"] == clips[clip["id"]][1]
            stored = np.asarray(bank.clips[row])
            assert np.array_equal(clip["pcm"], stored[: clip["length"]])
            assert not stored[clip["length"] :].any()
            seen.add(clip["id"])
    assert seen == set(clips)


def test_shards_are_reused_and_rewritten_when_a_file_changes(tmp_path, clips):
    cond = ClipConditioner(RATE, 1, 500)
    shards = Shards(tmp_path / "shards", cond, shard_size=8)
    first = shards.write({"train": clips}, progress=False)
    stamp = (shards.folder / "shards.json").stat().st_mtime_ns
    assert shards.write({"train": clips}, progress=False) == first
    assert (shards.folder / "shards.json").stat().st_mtime_ns == stamp
    more = dict(clips)
    more["new"] = (str(write_clip(tmp_path / "new.wav", seed=99)), "class0")
    again = shards.write({"train": more}, progress=False)
    assert sum(s["clips"] for s in again["splits"]["train"]) == 21


def test_a_damaged_shard_is_named(tmp_path, clips):
    shards = Shards(tmp_path / "shards", ClipConditioner(RATE, 1, 500), 8)
    index = shards.write({"train": clips}, progress=False)
    shard = index["splits"]["train"][1]
    path = shards.folder / shard["name"]
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF  # one flipped byte inside a clip
    path.write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match="does not match its checksum"):
        list(read_shard(path, shard["sha256"]))
    path.write_bytes(bytes(data[:3000]))  # truncated
    with pytest.raises(DataPrepError, match="does not match its checksum"):
        list(read_shard(path, shard["sha256"]))
    with pytest.raises(DataPrepError, match=f"shard {path} is damaged"):
        list(read_shard(path))  # no checksum to compare: the tar is cut


def test_an_index_naming_a_file_outside_its_folder_is_not_complete(
    tmp_path, clips
):
    shards = Shards(tmp_path / "shards", ClipConditioner(RATE, 1, 500), 8)
    index = shards.write({"train": clips}, progress=False)
    inputs = index["inputs"]
    assert shards._complete(index, inputs)
    # A shard of the same size outside the folder, named through "..".
    first = index["splits"]["train"][0]
    outside = tmp_path / "elsewhere.tar"
    outside.write_bytes((shards.folder / first["name"]).read_bytes())
    first["name"] = "../elsewhere.tar"
    assert not shards._complete(index, inputs)
    # The same shard name as a link to it.
    first["name"] = "link.tar"
    (shards.folder / "link.tar").symlink_to(outside)
    assert not shards._complete(index, inputs)


def test_a_folder_of_user_files_is_refused(tmp_path, clips):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    shards = Shards(tmp_path / "mine", ClipConditioner(RATE, 1, 500))
    with pytest.raises(NotOursError, match="notes.txt"):
        shards.write({"train": clips}, progress=False)


READ_ONLY = """
import json, logging, sys
from sb_urbansound.data.audio import ClipConditioner
from sb_urbansound.errors import UserError
from sb_urbansound.data.shards import Shards, read_shard
logging.basicConfig(level=logging.INFO)
shards = Shards(sys.argv[1], ClipConditioner(8000, 1, 500), shard_size=8)
try:
    index = shards.write({"train": json.loads(sys.argv[2])}, progress=False)
except UserError as e:
    sys.exit(f"error: {e}")
entries = index["splits"]["train"]
print(sum(len(list(read_shard(shards.folder / e["name"], e["sha256"])))
          for e in entries))
"""


@requires_mount
def test_complete_shards_on_a_read_only_file_system_are_used(tmp_path, clips):
    """Shared read-only data (docs/scale.md): complete shards are read as
    they are, without the lock; incomplete ones are one line saying what
    to do. (root ignores permission bits: a read-only bind mount.)"""
    folder = tmp_path / "shards"
    Shards(folder, ClipConditioner(RATE, 1, 500), shard_size=8).write(
        {"train": clips}, progress=False
    )
    mount = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}"
    )

    def run(clips):
        return run_in_namespace(
            mount,
            [sys.executable, "-c", READ_ONLY, str(folder), json.dumps(clips)],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    result = run(clips)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(len(clips))
    assert "read-only shards" in result.stderr
    more = {**clips, "new": (str(write_clip(tmp_path / "new.wav")), "x")}
    result = run(more)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"the shards in {folder} cannot be written" in result.stderr
    assert "point --shards_folder at a writable folder" in result.stderr


def test_webdataset_layout(tmp_path, clips):
    """Each clip is <key>.npy + <key>.json, in order: what WebDataset reads."""
    shards = Shards(tmp_path / "shards", ClipConditioner(RATE, 1, 500), 50)
    index = shards.write({"train": clips}, progress=False)
    with tarfile.open(shards.folder / index["splits"]["train"][0]["name"]) as t:
        names = t.getnames()
    assert names[:4] == [
        "000000000.npy",
        "000000000.json",
        "000000001.npy",
        "000000001.json",
    ]
    wds = pytest.importorskip("webdataset")
    url = str(shards.folder / index["splits"]["train"][0]["name"])
    first = next(iter(wds.WebDataset(url, shardshuffle=False).decode()))
    assert (
        json.loads(first["json"]) if isinstance(first["json"], bytes) else True
    )
    assert first["npy"].dtype == np.int16


def stream(index, folder, **kw):
    return ShardStream(folder, index["splits"]["train"], train=True, **kw)


def ids_of(dataset):
    return [item["id"] for item in dataset]


def test_each_rank_reads_its_shards_in_an_order_drawn_from_the_seed(
    tmp_path, clips
):
    shards = Shards(tmp_path / "shards", ClipConditioner(RATE, 1, 500), 3)
    index = shards.write({"train": clips}, progress=False)
    folder = shards.folder
    ranks = [
        stream(index, folder, rank=r, size=2, seed=7, buffer=4, epochs=3)
        for r in range(2)
    ]
    for epoch in (1, 2, 3):
        for r in ranks:
            r.set_epoch(epoch)
        a, b = ids_of(ranks[0]), ids_of(ranks[1])
        assert len(a) == len(b) == len(ranks[0])  # the same number of steps
        assert not set(a) & set(b)  # no clip in two ranks
        mine = deal_shards(index["splits"]["train"], 0, 2, 7, epoch)
        # a rank reads only the clips of the shards dealt to it
        assert set(a) <= {
            c["id"] for s in mine for c in read_shard(folder / s["name"])
        }
    # the same seed and epoch: the same order; another epoch: another one
    again = stream(index, folder, rank=0, size=2, seed=7, buffer=4, epochs=3)
    again.set_epoch(2)
    ranks[0].set_epoch(2)
    assert ids_of(again) == ids_of(ranks[0])
    ranks[0].set_epoch(3)
    assert ids_of(ranks[0]) != ids_of(again)
    other = stream(index, folder, rank=0, size=2, seed=8, buffer=4, epochs=3)
    other.set_epoch(2)
    assert ids_of(other) != ids_of(again)
    # alone, one process reads every clip every epoch
    alone = stream(index, folder, seed=7, buffer=4)
    assert sorted(ids_of(alone)) == sorted(clips)


def test_evaluation_reads_every_clip_once_over_the_ranks(tmp_path, clips):
    shards = Shards(tmp_path / "shards", ClipConditioner(RATE, 1, 500), 3)
    index = shards.write({"test": clips}, progress=False)
    seen = []
    for r in range(3):
        part = ShardStream(
            shards.folder, index["splits"]["test"], train=False, rank=r, size=3
        )
        got = ids_of(part)
        assert len(got) == len(part)
        seen += got
    assert sorted(seen) == sorted(clips)


MEMORY = """
import json, resource, sys
import numpy as np
from sb_urbansound.data.audio import ClipConditioner
from sb_urbansound.data.shards import ShardStream
index = json.load(open(sys.argv[1] + "/shards.json"))
shards = index["splits"]["train"][: int(sys.argv[2])]
data = ShardStream(sys.argv[1], shards, train=True, buffer=16)
n = sum(1 for _ in data)
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    # 40 shards of 10 clips of 4 s at 16 kHz stereo (256 KB each)
    source = write_clip(
        tmp_path / "a.wav", sample_rate=16000, channels=2, seconds=4.0
    )
    clips = {f"c{i:03d}": (str(source), "x") for i in range(400)}
    shards = Shards(tmp_path / "shards", ClipConditioner(16000, 2, 4000), 10)
    shards.write({"train": clips}, progress=False)
    peak = {}
    for n in (4, 40):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY, str(shards.folder), str(n)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        clips_read, rss_kb = map(int, result.stdout.split())
        assert clips_read == 10 * n
        peak[n] = rss_kb
    # ten times the data read, through the same 16-clip buffer (4 MB): the
    # peak grows by much less than the 90 MB more that was read
    assert peak[40] - peak[4] < 20_000, peak


def test_the_recipe_learns_from_shards(tiny_us8k, tmp_path):
    data, out = tiny_us8k, tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / "cnn.yaml"),
            f"--data_folder={data}",
            f"--output_folder={out}",
            "--data_source=shards",
            "--shard_size=10",
            "--number_of_epochs=12",
            "--lr=0.01",
            "--max_lr=0.01",
            "--noprogressbar",
            *TINY_CNN_ARGS,
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "test_results.json").read_text())
    assert results["n_clips"] == 4 * 6
    assert results["accuracy"] >= 0.6, results  # chance is 0.25
    index = json.loads((out / "shards" / "shards.json").read_text())
    assert [s["clips"] for s in index["splits"]["train"]] == [10, 10, 10, 10, 8]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert not torch.isnan(torch.tensor(history[-1]["train_loss"]))
