"""The pull request to SpeechBrain that ``tools/upstream_check.sh`` builds.

It must add our recipe beside SpeechBrain's UrbanSound8k recipe, apply to
SpeechBrain develop with ``git am`` and delete or change none of SpeechBrain's
files (but for rows appended to its CSV). Only the overlay step runs here
(``--no-checks``), not SpeechBrain's checks. It needs a SpeechBrain git
checkout (work tree or bare): ``SPEECHBRAIN_CHECKOUT``, else the mirror at
``/work/.mirror/speechbrain+speechbrain/repo``; skipped when there is none.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

CHECK = REPO / "tools" / "upstream_check.sh"
SB = Path(
    os.environ.get(
        "SPEECHBRAIN_CHECKOUT", "/work/.mirror/speechbrain+speechbrain/repo"
    )
)
DEST = "recipes/UrbanSound8k/SoundClassificationCNN/"
THEIRS = [  # SpeechBrain's UrbanSound8k recipe, which must stay as it is
    "recipes/UrbanSound8k/README.md",
    "recipes/UrbanSound8k/urbansound8k_prepare.py",
    "recipes/UrbanSound8k/SoundClassification",
    "tests/recipes/setup/recipes_UrbanSound8k_SoundClassification_train",
]


def git(*args, cwd):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def upstream_check(*args):
    return subprocess.run(
        ["bash", str(CHECK), *map(str, args)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )


def is_git_checkout(path):
    found = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--git-dir"],
        capture_output=True,
    )
    return path.is_dir() and found.returncode == 0


@pytest.mark.skipif(
    not is_git_checkout(SB),
    reason=f"no SpeechBrain git checkout at {SB} (set SPEECHBRAIN_CHECKOUT)",
)
def test_the_patches_apply_to_speechbrain_and_delete_nothing(tmp_path):
    patches = tmp_path / "patches"
    done = upstream_check(SB, "--patches", patches, "--no-checks")
    assert done.returncode == 0, done.stdout + done.stderr
    series = sorted(patches.glob("*.patch"))
    assert series, done.stdout
    assert not any("deleted file mode" in p.read_text() for p in series)

    # git am on a fresh clone of the checkout's HEAD
    fresh = tmp_path / "speechbrain"
    git("clone", "-q", "--shared", str(SB), str(fresh), cwd=tmp_path)
    base = git("rev-parse", "HEAD", cwd=fresh).strip()
    git("am", "-q", *map(str, series), cwd=fresh)

    status = git("diff", "--no-renames", "--name-status", base, cwd=fresh)
    changed = [line for line in status.splitlines() if line[0] != "A"]
    assert changed == ["M\ttests/recipes/UrbanSound8k.csv"], status
    added = [line.split("\t")[1] for line in status.splitlines()]
    assert any(path.startswith(DEST) for path in added), added
    assert not git("diff", base, "--", *THEIRS, cwd=fresh)
    csv_diff = git(
        "diff", base, "--", "tests/recipes/UrbanSound8k.csv", cwd=fresh
    )
    assert not [
        line
        for line in csv_diff.splitlines()
        if line.startswith("-") and not line.startswith("---")
    ]

    # Every added row names a file of the pull request and carries a result;
    # every YAML of the pull request has a row
    with open(fresh / "tests/recipes/UrbanSound8k.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if DEST in r["Hparam_file"]]
    assert rows
    for row in rows:
        assert row["performance"].startswith("Accuracy="), row
        for field in ("Script_file", "Hparam_file", "Readme_file"):
            assert (fresh / row[field].strip()).is_file(), row[field]
    yamls = {
        p.relative_to(fresh).as_posix() for p in fresh.glob(DEST + "**/*.yaml")
    }
    assert yamls == {row["Hparam_file"] for row in rows}


def test_patches_into_a_folder_that_is_not_empty_are_refused(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "mine.txt").write_text("keep me")
    done = upstream_check(tmp_path, "--patches", patches, "--no-checks")
    assert done.returncode == 2
    assert "is not empty" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (patches / "mine.txt").read_text() == "keep me"
