"""The clip bank and the feature bank: the same clips as the per-clip path,
rebuilt when files change, safe to interrupt, and never deleting what is not
theirs."""

import gc
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    FORMATS,
    requires_mount,
    run_in_namespace,
    run_with_memory_limit,
    write_clip,
)
from sb_urbansound.atomic import MARKER_FILE
from sb_urbansound.data import bank as bank_module
from sb_urbansound.data.audio import ClipConditioner, load_audio, time_shift
from sb_urbansound.data.bank import (
    ClipBank,
    FeatureBank,
    is_bank_folder,
    random_placement,
    roll_rows,
)
from sb_urbansound.errors import DataPrepError, NotOursError
from sb_urbansound.training.features import MelSpectrogramDB

RATE = 16000


@pytest.fixture
def clips(tmp_path):
    """Clips in the data set's mix of formats, some longer than 1 s."""
    paths = {}
    for i, (rate, channels, subtype) in enumerate(FORMATS):
        seconds = 0.3 + 0.25 * i
        path = write_clip(
            tmp_path / "data" / f"c{i}.wav",
            class_idx=i,
            sample_rate=rate,
            channels=channels,
            seconds=seconds,
            subtype=subtype,
            seed=i,
        )
        paths[f"c{i}"] = str(path)
    return paths


def make_bank(tmp_path, channels=2, duration_ms=1000, **kw):
    conditioner = ClipConditioner(RATE, channels, duration_ms, **kw)
    return ClipBank(tmp_path / "bank", conditioner), conditioner


@pytest.mark.parametrize("channels", [1, 2])
def test_bank_equals_the_per_clip_path(tmp_path, clips, channels):
    bank, cond = make_bank(tmp_path, channels, remove_dc=True)
    summary = bank.build(clips, progress=False)
    assert summary["decoded"] == len(clips)
    ids = sorted(clips)
    got = bank.waveforms(bank.rows(ids), train=False)
    for clip_id, wav in zip(ids, got):
        # the recipe's per-clip evaluation path: padded at the end
        sig, rate = load_audio(clips[clip_id], cond.max_seconds())
        expected = cond.clip(sig, rate)
        assert wav.shape == expected.shape
        # int16 storage: within half a quantisation step (and the clamp)
        assert (wav - expected.clamp(-1, 1)).abs().max() <= 0.5 / 32767 + 1e-7


BUILD_ODD_RATE = """
import sys, torch
from sb_urbansound.data.audio import ClipConditioner, load_audio
from sb_urbansound.data.bank import ClipBank

cond = ClipConditioner(16000, 1, 1000)
bank = ClipBank(sys.argv[1], cond)
bank.build({"a": sys.argv[2]}, progress=False)
(got,) = bank.waveforms(bank.rows(["a"]), train=False)
expected = cond.clip(*load_audio(sys.argv[2])).clamp(-1, 1)
assert (got - expected).abs().max() <= 0.5 / 32767 + 1e-7
"""


def test_a_bank_of_a_44101_hz_file_is_built_in_bounded_memory(tmp_path):
    path = write_clip(tmp_path / "odd.wav", 2, 44101, 2, 2.0, "PCM_24")
    result = run_with_memory_limit(
        [sys.executable, "-c", BUILD_ODD_RATE, tmp_path / "bank", path],
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_bank_of_another_resampler_is_rebuilt(tmp_path, clips, monkeypatch):
    monkeypatch.setattr(bank_module, "RESAMPLER", "torchaudio sinc")
    old, _ = make_bank(tmp_path)
    old.build(clips, progress=False)
    monkeypatch.undo()
    new, _ = make_bank(tmp_path)
    assert new.build(clips, progress=False)["decoded"] == len(clips)
    assert not old.folder.exists()


def test_training_draws_place_each_clip_whole(tmp_path, clips):
    bank, cond = make_bank(tmp_path, channels=1)
    bank.build(clips, progress=False)
    rows = bank.rows(["c0"])  # 0.3 s in a 1 s clip
    stored = bank.waveforms(rows, train=False)[0]
    length = int(bank.lengths[rows][0])
    starts = set()
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        drawn = bank.waveforms(rows, train=True, shift_pct=0.4, generator=gen)[
            0
        ]
        # a circular roll of the stored clip: same samples, whole and in order
        offset = int(torch.nonzero(drawn == stored[0])[0])
        assert torch.equal(torch.roll(stored, offset), drawn)
        starts.add(offset)
    assert len(starts) > 5  # random positions
    assert length == cond.num_samples * 3 // 10


def test_random_placement_law():
    torch.manual_seed(0)
    lengths = torch.tensor([100, 40] * 2000)
    rolls = random_placement(lengths, 100, 0.2)
    full, short = rolls[0::2], rolls[1::2]
    assert full.min() >= 0 and full.max() < 20  # shift only: [0, 0.2 * 100)
    assert short.max() >= 70 and short.max() < 100  # pad [0, 60] + shift
    assert roll_rows(
        torch.arange(6).view(2, 3), torch.tensor([0, 1])
    ).tolist() == [
        [0, 1, 2],
        [5, 3, 4],
    ]


def test_changed_file_is_decoded_again_and_only_it(tmp_path, clips):
    bank, _ = make_bank(tmp_path)
    bank.build(clips, progress=False)
    again = ClipBank(tmp_path / "bank", bank.conditioner)
    assert again.build(clips, progress=False)["decoded"] == 0

    # Same size and modification time, other content: the ctime tells
    path = clips["c1"]
    st = os.stat(path)
    data, rate = sf.read(path, always_2d=True)
    time.sleep(0.01)
    sf.write(path, -data, rate, subtype=sf.info(path).subtype)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    rebuilt = ClipBank(tmp_path / "bank", bank.conditioner)
    assert rebuilt.build(clips, progress=False)["decoded"] == 1
    old = bank.waveforms(bank.rows(["c1"]), train=False)
    new = rebuilt.waveforms(rebuilt.rows(["c1"]), train=False)
    assert torch.allclose(new, -old, atol=2 / 32767)

    # A clip left out of the run is dropped, a new one decoded
    fewer = {k: v for k, v in clips.items() if k != "c2"}
    fewer["new"] = str(write_clip(tmp_path / "data" / "new.wav", seed=9))
    assert (
        ClipBank(tmp_path / "bank", bank.conditioner).build(
            fewer, progress=False
        )["decoded"]
        == 1
    )


def test_interrupted_build_leaves_no_half_bank(tmp_path, clips, monkeypatch):
    bank, cond = make_bank(tmp_path)
    real = bank_module.decode_clip
    calls = []

    def dying(conditioner, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(conditioner, path)

    monkeypatch.setattr(bank_module, "decode_clip", dying)
    with pytest.raises(KeyboardInterrupt):
        bank.build(clips, threads=1, progress=False)
    monkeypatch.undo()
    names = sorted(p.name for p in bank.folder.iterdir())
    # no index, no data, no temporary file
    assert names == [".lock", MARKER_FILE]
    fresh = ClipBank(tmp_path / "bank", cond)
    assert fresh.build(clips, progress=False)["decoded"] == len(clips)


def test_unreadable_file_is_named(tmp_path, clips):
    bank, _ = make_bank(tmp_path)
    with open(clips["c3"], "r+b") as f:  # a valid header, then garbage
        f.seek(44)
        f.write(b"\xff" * 64)
    with open(clips["c2"], "wb") as f:
        f.write(b"not audio at all")
    with pytest.raises(DataPrepError) as info:
        bank.build(clips, progress=False)
    assert clips["c2"] in str(info.value)
    assert not (bank.folder / "index.json").exists()


def test_only_marked_banks_are_ever_deleted(tmp_path, clips):
    folder = tmp_path / "P"
    first = ClipBank(folder, ClipConditioner(RATE, 1, 500))
    first.build(clips, progress=False)
    assert is_bank_folder(first.folder)
    # Things of the user's and of another program, put beside it later
    (folder / ".vscode").mkdir(parents=True)
    (folder / ".vscode" / "settings.json").write_text("{}")
    (folder / "myconfig").mkdir()
    (folder / "myconfig" / "settings.json").write_text('{"sample_rate": 1}')
    (folder / "myconfig" / "README.txt").write_text("mine")
    (folder / "fake").mkdir()
    (folder / "fake" / "BANK.json").write_text('{"made_by": "someone else"}')
    (folder / "run").mkdir()
    (folder / "run" / MARKER_FILE).write_text(
        '{"made_by": "sb_urbansound", "kind": "run"}'
    )
    second = ClipBank(folder, ClipConditioner(RATE, 2, 500))
    second.build(clips, progress=False)
    assert not first.folder.exists()  # our bank of other settings: removed
    for kept in [".vscode/settings.json", "myconfig/README.txt", "fake", "run"]:
        assert (folder / kept).exists(), kept
    assert json.loads((folder / "myconfig/settings.json").read_text()) == {
        "sample_rate": 1
    }


def test_a_bank_folder_of_user_files_is_refused(tmp_path, clips):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    bank = ClipBank(folder, ClipConditioner(RATE, 1, 500))
    with pytest.raises(NotOursError, match="notes.txt"):
        bank.build(clips, progress=False)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    # a file where the bank folder should be
    with pytest.raises(NotOursError, match="is a file"):
        ClipBank(folder / "notes.txt", bank.conditioner).build(clips)


def test_a_bank_in_use_by_another_run_is_not_deleted(tmp_path, clips):
    folder = tmp_path / "banks"
    first = ClipBank(folder, ClipConditioner(RATE, 1, 500))
    first.build(clips, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(first.folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        ClipBank(folder, ClipConditioner(RATE, 2, 500)).build(
            clips, progress=False
        )
    finally:
        holder.kill()
        holder.wait()
    # (after the holder is gone: a build of this bank waits for its lock)
    assert first.build(clips, progress=False)["decoded"] == 0


HOLD_LOCK = """
import sys, time
from sb_urbansound.atomic import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""

BUILD = """
import json, logging, sys
import torch
from sb_urbansound.data.audio import ClipConditioner, load_audio
from sb_urbansound.data.bank import ClipBank
logging.basicConfig(level=logging.INFO)
clips = json.loads(sys.argv[2])
cond = ClipConditioner(16000, 2, 1000)
bank = ClipBank(sys.argv[1], cond)
bank.build(clips, threads=1, progress=False)
bank.open(clips)
for clip_id, path in clips.items():
    got = bank.waveforms(bank.rows([clip_id]), train=False)[0]
    sig, rate = load_audio(path, cond.max_seconds())
    want = cond.clip(sig, rate).clamp(-1, 1)
    assert (got - want).abs().max() <= 0.5 / 32767 + 1e-7, clip_id
print("ok", flush=True)
"""


@pytest.mark.slow  # four processes at once
def test_runs_sharing_a_bank_folder_build_and_read_their_own(tmp_path, clips):
    """Concurrent builds of one bank: each run waits for the other's build
    and reads exactly the clips it asked for."""
    ids = sorted(clips)
    sets = [
        {k: clips[k] for k in ids[:5]},
        {k: clips[k] for k in ids[3:]},
    ]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BUILD,
                str(tmp_path / "bank"),
                json.dumps(s),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for s in sets * 2
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_a_reader_opens_the_bank_it_built(tmp_path, clips):
    cond = ClipConditioner(RATE, 1, 1000)
    ids = sorted(clips)
    mine = {k: clips[k] for k in ids[:4]}
    other = {k: clips[k] for k in ids[4:]}
    a = ClipBank(tmp_path / "bank", cond)
    a.build(mine, progress=False)
    expected = a.waveforms(a.rows(sorted(mine)), train=False).clone()
    b = ClipBank(tmp_path / "bank", cond)
    b.build(other, progress=False)  # replaces the bank on disk
    a.open(mine)
    got = a.waveforms(a.rows(sorted(mine)), train=False)
    assert torch.equal(got, expected)
    # A reader that did not build it checks what is on disk
    with pytest.raises(DataPrepError, match="other clips"):
        ClipBank(tmp_path / "bank", cond).open(mine)


def _damage(bank, how, tmp_path):
    """Damage a built bank in one way; return the clips to decode again."""
    index_path = bank.folder / "index.json"
    index = json.loads(index_path.read_text())
    data = bank.folder / index["data"]
    entries = index["clips"]
    every = set(entries)
    if how == "npy header":
        with open(data, "r+b") as f:  # an unbalanced bracket in the header
            f.seek(10)
            f.write(b"{'descr': ((((")
        return every
    if how == "row out of range":
        entries["c0"]["row"] = 999
    elif how == "row length":
        entries["c1"]["length"] = 10**9
    elif how == "array shape":
        np.save(data, np.zeros((2, 3), dtype=np.int16))
        return every
    elif how == "flipped bytes":
        array = np.load(data, mmap_mode="r+")
        array[entries["c3"]["row"], 100:110] ^= 0x5A5A
        array.flush()
        return {"c3"}
    elif how == "swapped rows":
        rows = entries["c1"]["row"], entries["c2"]["row"]
        entries["c2"]["row"], entries["c1"]["row"] = rows
        index_path.write_text(json.dumps(index))
        return {"c1", "c2"}
    elif how == "path out of the bank":
        outside = tmp_path / "x.npy"
        np.save(outside, np.zeros((len(entries), 16000), dtype=np.int16))
        index["data"] = "../../x.npy"
    index_path.write_text(json.dumps(index))
    return every


@pytest.mark.parametrize(
    "how",
    [
        "npy header",
        "row out of range",
        "row length",
        "array shape",
        "flipped bytes",
        "swapped rows",
        "path out of the bank",
    ],
)
def test_a_damaged_bank_is_named_and_rebuilt(tmp_path, clips, how, caplog):
    bank, cond = make_bank(tmp_path, channels=1)
    bank.build(clips, progress=False)
    ids = sorted(clips)
    good = bank.waveforms(bank.rows(ids), train=False).clone()
    redo = _damage(bank, how, tmp_path)
    outside = tmp_path / "x.npy"
    before = outside.read_bytes() if outside.exists() else None

    again = ClipBank(tmp_path / "bank", cond)
    with caplog.at_level("WARNING", logger="sb_urbansound.data.bank"):
        summary = again.build(clips, progress=False)
    assert summary["decoded"] == len(redo)
    assert "damaged" in caplog.text or "checksum" in caplog.text
    if len(redo) < len(clips):  # the damaged clips are named
        assert all(c in caplog.text for c in redo)
    assert torch.equal(again.waveforms(again.rows(ids), train=False), good)
    if before is not None:
        assert outside.read_bytes() == before  # never written, never read
    # and the next run finds it whole
    assert ClipBank(tmp_path / "bank", cond).build(clips)["decoded"] == 0


@requires_mount
def test_a_complete_bank_on_a_read_only_file_system_is_used(tmp_path, clips):
    bank, cond = make_bank(tmp_path)
    bank.build(clips, progress=False)
    root = tmp_path / "bank"
    mount = f"mount --bind {root} {root} && mount -o remount,ro,bind {root}"
    result = run_in_namespace(
        mount,
        [sys.executable, "-c", BUILD, str(root), json.dumps(clips)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
    assert "read-only bank" in result.stderr
    # A clip the read-only bank does not hold: a clear message
    more = {**clips, "new": str(write_clip(tmp_path / "new.wav", seed=7))}
    result = run_in_namespace(
        mount, [sys.executable, "-c", BUILD, str(root), json.dumps(more)]
    )
    assert result.returncode != 0
    assert "cannot be written" in result.stderr
    assert "writable folder" in result.stderr


FULL_DISK = """
import json, sys
from sb_urbansound.data.audio import ClipConditioner
from sb_urbansound.data.bank import ClipBank
from sb_urbansound.errors import UserError
try:
    ClipBank(sys.argv[1], ClipConditioner(16000, 2, 1000)).build(
        json.loads(sys.argv[2]), progress=False
    )
except UserError as e:
    print(e)
    sys.exit(3)
print("built")
"""


@requires_mount
def test_a_full_disk_is_named_and_leaves_nothing(tmp_path, clips):
    disk = tmp_path / "disk"
    disk.mkdir()
    bank = disk / "bank"
    build = [sys.executable, "-c", FULL_DISK, str(bank), json.dumps(clips)]
    script = (
        f"{shlex.join(build)}; echo rc=$?; ls -a {bank}/*; "
        f"mount -o remount,size=20m {disk} && {shlex.join(build)}"
    )
    # the bank needs 8 clips x 1 s x 2 channels x 2 bytes = 512 KB
    result = run_in_namespace(
        f"mount -t tmpfs -o size=300k tmpfs {disk}", ["sh", "-c", script]
    )
    out = result.stdout
    assert "rc=3" in out, (out, result.stderr[-2000:])  # not SIGBUS (135)
    assert f"no space left on the device of {bank}" in out
    assert "it needs 1 MB" in out or "it needs 0 MB" in out
    listing = out.split("rc=3", 1)[1].split("built", 1)[0]
    assert ".sbu-tmp" not in listing and "clips-" not in listing
    assert out.strip().endswith("built"), out


def test_feature_bank_equals_features_of_the_rolled_clip(tmp_path, clips):
    bank, _ = make_bank(tmp_path, channels=2)
    bank.build(clips, progress=False)
    # top_db off: the floor follows each clip's loudest frame, and the edge
    # frames (reflect padding) can hold it; the geometry is what is checked
    mel = MelSpectrogramDB(
        RATE, n_fft=512, hop_length=256, n_mels=32, top_db=None
    )
    feats = FeatureBank(bank, mel)
    n = bank.conditioner.num_samples
    frames = n // 256 + 1
    assert feats.time_dim == 3 and feats.hop == pytest.approx(n / frames)
    rows = bank.rows(sorted(clips))
    # Evaluation: the features of the stored clips (float16 storage)
    stored = mel(bank.waveforms(rows, train=False))
    assert (feats.features(rows, train=False) - stored).abs().max() < 0.1

    # Training draws the tutorial's placement and rolls whole frames
    gen = torch.Generator().manual_seed(3)
    drawn = feats.features(rows, train=True, shift_pct=0.4, generator=gen)
    gen = torch.Generator().manual_seed(3)
    shifts = random_placement(bank.lengths[rows], n, 0.4, gen)
    for i, k in enumerate(torch.round(shifts / feats.hop).long().tolist()):
        expected = torch.roll(feats.feats[rows[i]].float(), k, -1)
        assert torch.equal(drawn[i], expected)
    assert len(set(shifts.tolist())) > 1

    # A roll of k frames is the waveform rolled by k hops, and, for
    # the frames that wrapped round, by k hops less the part of a hop by which
    # the frames overshoot the clip (frames * hop - num_samples samples)
    overshoot = frames * 256 - n
    for i in range(len(rows)):
        wav = bank.waveforms(rows[i : i + 1], train=False)
        for k in (5, 20, 40):
            rolled = torch.roll(feats.feats[rows[i]].float(), k, -1)
            kept = mel(torch.roll(wav, k * 256, dims=1))[0]
            wrapped = mel(torch.roll(wav, k * 256 - overshoot, dims=1))[0]
            inner = slice(k + 2, frames - 2)  # away from the array's edges
            assert (rolled[..., inner] - kept[..., inner]).abs().max() < 0.1
            outer = slice(2, k - 2)
            assert (rolled[..., outer] - wrapped[..., outer]).abs().max() < 0.1


def test_time_shift_of_the_per_clip_path_is_a_roll():
    x = torch.arange(10.0)
    gen = torch.Generator().manual_seed(1)
    shifted = time_shift(x, 0.5, gen)
    k = int(torch.nonzero(shifted == 0)[0])
    assert torch.equal(torch.roll(x, k), shifted)


def test_bank_as_recipe_builds_it(tmp_path, clips):
    """np.load of the bank works from a memory map (not read into RAM)."""
    bank, _ = make_bank(tmp_path)
    bank.build(clips, progress=False)
    assert isinstance(bank.clips, np.memmap)
    assert bank.nbytes == len(clips) * RATE * 2 * 2


class _Terminal:
    """A stderr that says it is a terminal, and keeps what is written."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return True


def test_bank_builds_draw_no_progress_bar_into_a_log_file(
    tmp_path, clips, capsys
):
    bank, _ = make_bank(tmp_path)
    bank.build(clips)  # progress asked; stderr is not a terminal
    mel = MelSpectrogramDB(RATE, n_fft=256, n_mels=16, channels=2)
    FeatureBank(bank, mel)
    assert "Clip bank" not in capsys.readouterr().err


def test_the_clip_and_feature_banks_show_their_progress_on_a_terminal(
    tmp_path, clips, monkeypatch
):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bank, _ = make_bank(tmp_path)
    bank.build(clips)
    mel = MelSpectrogramDB(RATE, n_fft=256, n_mels=16, channels=2)
    FeatureBank(bank, mel)
    done = f" 100%|##########| {len(clips)}/{len(clips)} "
    assert f"Clip bank:{done}" in terminal.text
    assert f"Feature bank:{done}" in terminal.text


def test_each_thread_of_the_banks_runs_torch_on_one_thread(
    tmp_path, clips, monkeypatch
):
    # Two threads that each start torch's thread pool of 2 make 4 busy
    # threads on 2 cores: they wait for each other at every operation
    seen = []
    decode = bank_module.decode_clip

    def counting_decode(*args):
        seen.append(("decode", torch.get_num_threads()))
        return decode(*args)

    class CountingMel(MelSpectrogramDB):
        def forward(self, wavs):
            seen.append(("features", torch.get_num_threads()))
            return super().forward(wavs)

    monkeypatch.setattr(bank_module, "decode_clip", counting_decode)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bank, _ = make_bank(tmp_path)
        bank.build(clips, threads=2, progress=False)
        FeatureBank(bank, CountingMel(RATE, n_fft=256, n_mels=16), batch_size=2)
        assert torch.get_num_threads() == 2  # as it was
    finally:
        torch.set_num_threads(before)
    assert {kind for kind, _ in seen} == {"decode", "features"}
    assert {threads for _, threads in seen} == {1}


def test_the_feature_bank_is_the_same_in_any_batch_size(tmp_path, clips):
    bank, _ = make_bank(tmp_path, channels=2)
    bank.build(clips, progress=False)
    mel = MelSpectrogramDB(RATE, n_fft=256, n_mels=16, channels=2)
    one = FeatureBank(bank, mel, batch_size=1, progress=False)
    several = FeatureBank(bank, mel, batch_size=3, progress=False)
    assert torch.equal(one.feats, several.feats)
    rows = bank.rows(sorted(clips))
    stored = mel(bank.waveforms(rows, train=False)).to(torch.float16)
    assert torch.equal(several.feats[rows], stored)


def test_a_failed_reservation_closes_the_bank_file_once(
    tmp_path, clips, monkeypatch
):
    # Closing the descriptor and then the file object that owns it would
    # close whichever file next took that number.
    bank, _ = make_bank(tmp_path)
    numbers = []

    def no_room(fd, size, folder):
        numbers.append(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bank_module.atomic, "reserve_space", no_room)
    with pytest.raises(OSError, match="No space") as failed:
        bank.build(clips, threads=1, progress=False)
    opened = []
    while not opened or opened[-1] < numbers[0]:  # up to the freed number
        opened.append(os.open(tmp_path / f"other{len(opened)}", os.O_CREAT))
    del failed  # frees the failed build's frames and their file object
    gc.collect()
    for fd in opened:
        os.fstat(fd)  # EBADF if the bank's file object closed it
        os.close(fd)
    assert not list(bank.folder.glob(f"*{bank_module.atomic.TMP_SUFFIX}"))
