#!/usr/bin/env python3
"""Write the tiny sample data of the recipe tests (tests/samples/UrbanSound8k).

The files are synthetic (a class-dependent tone with noise), so they carry no
licence of a data set. Run from the repository root; the output is
deterministic:

    python tools/make_test_samples.py

Layout:

* ``metadata/UrbanSound8K.csv`` and ``audio/fold{1,2,3}/*.wav``: an
  UrbanSound8K-shaped set, 2 classes x 2 clips x 3 folds (for cnn.yaml and the
  model YAMLs);
* ``annotation/{train,valid,test}.json``: ready-made manifests of that set,
  with ``{data_root}`` paths (for ``--skip_prep=True``);
* ``digits/<digit>/<digit>_<speaker>_<index>.wav``: class folders whose file
  names also carry the label and a speaker (for folders.yaml and fsdd.yaml).
"""

import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import US8K_COLUMNS, write_clip  # noqa: E402

OUT = REPO / "tests" / "samples" / "UrbanSound8k"
CLASSES = {3: "dog_bark", 8: "siren"}
# (sample rate, channels, subtype): mostly small mono files, one stereo
FORMATS = [(8000, 1, "PCM_16"), (8000, 1, "PCM_16"), (16000, 2, "PCM_16")]


def main():
    """Write every sample file."""
    rows, k = [], 0
    for fold in (1, 2, 3):
        for class_id, name in CLASSES.items():
            for i in range(2):
                rate, channels, subtype = FORMATS[k % len(FORMATS)]
                fs_id = 100 * fold + class_id
                fname = f"{fs_id}-{class_id}-0-{i}.wav"
                write_clip(
                    OUT / "audio" / f"fold{fold}" / fname,
                    class_idx=class_id,
                    sample_rate=rate,
                    channels=channels,
                    seconds=0.5,
                    subtype=subtype,
                    seed=k,
                )
                rows.append(
                    {
                        "slice_file_name": fname,
                        "fsID": fs_id,
                        "start": 0.0,
                        "end": 0.5,
                        "salience": 1,
                        "fold": fold,
                        "classID": class_id,
                        "class": name,
                    }
                )
                k += 1
    (OUT / "metadata").mkdir(parents=True, exist_ok=True)
    with open(OUT / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        # LF line ends, as the data set's own file (CRLF reads as trailing
        # whitespace in a patch)
        writer = csv.DictWriter(f, fieldnames=US8K_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    (OUT / "annotation").mkdir(exist_ok=True)
    for split, fold in (("train", 1), ("valid", 2), ("test", 3)):
        manifest = {
            Path(r["slice_file_name"]).stem: {
                "wav": f"{{data_root}}/audio/fold{fold}/{r['slice_file_name']}",
                "label": r["class"],
            }
            for r in rows
            if r["fold"] == fold
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (OUT / "annotation" / f"{split}.json").write_text(text)

    for digit in (0, 1):
        for s, speaker in enumerate(("anna", "bob", "carl")):
            for i in range(2):
                write_clip(
                    OUT / "digits" / str(digit) / f"{digit}_{speaker}_{i}.wav",
                    class_idx=digit * 5,
                    sample_rate=8000,
                    seconds=0.3,
                    seed=100 + 10 * digit + 3 * s + i,
                )


if __name__ == "__main__":
    main()
