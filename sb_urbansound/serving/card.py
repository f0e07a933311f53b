"""The model card: ``README.md`` in every model folder, Hugging Face style.

Built from the run's ``test_results.json``, ``history.json`` and
``run_settings.json``; its usage examples run as written.

Authors
-------
 * sb-urbansound contributors
"""

import io
import json
from pathlib import Path

from ruamel.yaml import YAML
from sb_urbansound import __version__
from sb_urbansound.atomic import atomic_write_text
from sb_urbansound.data.manifests import recorded_split
from sb_urbansound.training.report import format_duration, format_pct
from sb_urbansound.yaml_reader import read_yaml

#: The card's file name in the model folder.
CARD_FILE = "README.md"
#: Where each data source comes from, by the name of the YAML's ``prepare``.
SOURCES = {
    "prepare_urbansound8k": "UrbanSound8K",
    "prepare_folders": "class folders",
    "prepare_filenames": "labels in file names",
}


def _read_json(path):
    """The JSON in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _module_name(module):
    """A module's class name; a container's is its children's, joined."""
    name = type(module).__name__
    children = list(getattr(module, "children", list)())
    if name.endswith("Sequential") and children:
        return "+".join(type(c).__name__ for c in children)
    return name


def _plural(n, word):
    """``"1 epoch"``, ``"2 epochs"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def card_info(hparams, labels, hardware=None):
    """Gather what the card says from a run's hyperparameters and files.

    Arguments
    ---------
    hparams : dict
        The loaded training hyperparameters.
    labels : list of str
        The class names, in index order.
    hardware : str, optional
        The machine (default: ``hardware_description()``).

    Returns
    -------
    dict
        The facts the card prints (see :func:`model_card`).

    Example
    -------
    >>> hparams = {"output_folder": "/nowhere", "sample_rate": 16000}
    >>> info = card_info(hparams, ["a", "b"], hardware="CPU")
    >>> info["labels"], info["test"], info["source"], info["settings"]
    (['a', 'b'], None, 'your data', {'sample_rate': 16000})
    """
    if hardware is None:
        from sb_urbansound.training.hardware import hardware_description

        hardware = hardware_description()
    output = Path(hparams.get("output_folder", "."))
    test = _read_json(hparams.get("test_results_file", output / "x.json"))
    history = _read_json(hparams.get("history_file", output / "x.json"))
    run = _read_json(output / "run_settings.json") or {}
    prepare = hparams.get("prepare")  # a function, or a partial of one
    prepare = getattr(getattr(prepare, "func", prepare), "__name__", None)
    modules = {
        name: _module_name(module)
        for name, module in hparams.get("modules", {}).items()
        if module is not None
    }
    settings = {}
    for key in (
        "sample_rate channels duration_ms remove_dc n_mels n_fft hop_length "
        "cnn_channels cnn_pooling number_of_epochs batch_size lr max_lr "
        "label_smoothing mixup_alpha tta_views tta_max_shift data_source "
        "freeze_encoder unfreeze_after_epochs encoder_lr_scale seed"
    ).split():
        value = hparams.get(key)
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) for v in value
        ):
            value = list(value)
        if isinstance(value, (bool, int, float, str, list)):
            settings[key] = value
    folds = {
        split: list(hparams[f"{split}_fold_nums"])
        for split in ("train", "valid", "test")
        if hparams.get(f"{split}_fold_nums") is not None
    }
    clips = {
        split: entry.get("clips")
        for split, entry in (run.get("data") or {}).items()
        if isinstance(entry, dict)
    }
    encoder = hparams.get("modules", {}).get("embedding_model")
    history = history if isinstance(history, list) else None
    times = [h.get("train_seconds") for h in history or ()]
    known = times and all(isinstance(t, (int, float)) for t in times)
    return {
        "labels": list(labels),
        "modules": modules,
        "settings": settings,
        "source": SOURCES.get(prepare, "your data"),
        "data_folder": Path(str(hparams.get("data_folder", ""))).name,
        "n_folds": hparams.get("n_folds"),
        "split": None
        if hparams.get("skip_prep")
        else recorded_split(hparams.get("manifest_folder")),
        "folds": folds,
        "leaky": bool(hparams.get("leaky_random_split", False)),
        "clips": clips,
        "test": test if isinstance(test, dict) else None,
        "history": history,
        "train_seconds": float(sum(times)) if known else None,
        "hardware": hardware,
        # Where a pretrained encoder comes from and its licence (YAMNet)
        "pretrained": getattr(encoder, "CARD_NOTE", None),
    }


def _front_matter(info, name):
    """The card's YAML front matter (Hugging Face model card metadata)."""
    meta = {
        "library_name": "speechbrain",
        "pipeline_tag": "audio-classification",
        "tags": ["audio-classification", "speechbrain", "sb-urbansound"],
    }
    source = info["source"]
    dataset = source if source == "UrbanSound8K" else info["data_folder"]
    if dataset:
        meta["datasets"] = [dataset]
    meta["metrics"] = ["accuracy"]
    test = info["test"]
    if test and test.get("accuracy") is not None:
        split = ", ".join(str(f) for f in info["folds"].get("test", []))
        task = {"type": "audio-classification", "name": "Audio Classification"}
        data = {"name": dataset or "test set"}
        data["type"] = (dataset or "audio").lower()
        data["split"] = f"fold {split}" if split else "test"
        value = round(float(test["accuracy"]), 4)
        metric = {"type": "accuracy", "value": value, "name": "Test accuracy"}
        result = {"task": task, "dataset": data, "metrics": [metric]}
        meta["model-index"] = [{"name": name, "results": [result]}]
    stream = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(meta, stream)
    return "---\n" + stream.getvalue() + "---\n"


USAGE = """\
## Usage

Install the plugin from a clone of its repository (it is on no package
index): `pip install -e ".[export,runtime]"` in the clone. Put this folder at
`model/` (`huggingface-cli download <user>/<repository> --local-dir model`).
The examples classify `clip.wav`: any format soundfile reads, at any rate and
channel count, is converted as in training.

### Python, with SpeechBrain

```python
from speechbrain.inference.classifiers import EncoderClassifier

model = EncoderClassifier.from_hparams(source="model", savedir="model")
out_prob, score, index, text_lab = model.classify_file("clip.wav")
print(text_lab[0], float(score.exp()))
```

`load_model` checks the folder first (a missing file is named):

```python
from sb_urbansound.serving.inference import load_model
from sb_urbansound.serving.classify import classify_files

model = load_model("model")
print(classify_files(model, ["clip.wav"], top_k=3))
```

### Command line

Long recordings are scored over sliding windows, `--segments` lists their
events and `--stream` reads a live stream:

```bash
python -m sb_urbansound.serving.classify model clip.wav --top-k 3
python -m sb_urbansound.serving.classify model clip.wav --segments --json
```

### ONNX, without torch

`model.onnx` holds the whole model, labels and audio spec included. Write it
(if the folder has none) with:

```bash
python -m sb_urbansound.serving.export model --format onnx
```

then classify without torch (numpy, soundfile, soxr and onnxruntime):

```python
from sb_urbansound.serving.runtime import OnnxModel

model = OnnxModel("model")
print(model.classify_file("clip.wav", top_k=3))
```

or from the command line: `python -m sb_urbansound.serving.classify \
model clip.wav
--backend onnx`.
"""


def model_card(info, name="sb-urbansound sound classifier"):
    """The text of the model card.

    Arguments
    ---------
    info : dict
        From :func:`card_info`.
    name : str
        The model's name (title and ``model-index``).

    Returns
    -------
    str
        Markdown with YAML front matter.

    Example
    -------
    >>> info = card_info({"output_folder": "/nowhere"}, ["dog", "siren"], "CPU")
    >>> text = model_card(info)
    >>> text.startswith("---\\nlibrary_name: speechbrain\\n")
    True
    >>> "| 1 | siren |" in text
    True
    """
    test = info["test"] or {}
    per_class = test.get("per_class_accuracy") or {}
    matrix = test.get("confusion_matrix")
    test_labels = test.get("labels") or []
    counts = {}
    if matrix and len(matrix) == len(test_labels):
        counts = {lab: sum(row) for lab, row in zip(test_labels, matrix)}
    modules = info["modules"]
    arch = " → ".join(
        modules[k]
        for k in ("compute_features", "mean_var_norm", "embedding_model")
        if k in modules
    ) + (f" → {modules['classifier']}" if "classifier" in modules else "")
    s = info["settings"]
    spec = ""
    if {"sample_rate", "channels", "duration_ms"} <= set(s):
        spec = (
            f" It hears {s['duration_ms'] / 1000:g} s clips at "
            f"{s['sample_rate']} Hz, {_plural(s['channels'], 'channel')}; "
            "longer recordings are scored over sliding windows of that length."
        )
    lines = [
        _front_matter(info, name),
        f"# {name}",
        "",
        f"A sound classifier for {len(info['labels'])} classes, trained "
        f"with sb-urbansound {__version__}, a SpeechBrain plugin: "
        f"{arch or 'see hyperparams.yaml'}.{spec}",
        "",
        "## Classes",
        "",
        "| index | label | test accuracy | test clips |",
        "|---:|---|---:|---:|",
    ]
    for i, label in enumerate(info["labels"]):
        lines.append(
            f"| {i} | {label} | {format_pct(per_class.get(label))} | "
            f"{counts.get(label, 'n/a')} |"
        )
    lines += ["", "## Training data", ""]
    source = info["source"]
    where = f"`{info['data_folder']}`" if info["data_folder"] else "?"
    if source == "UrbanSound8K":
        lines.append(
            "UrbanSound8K (Salamon, Jacoby and Bello, ACM MM 2014; CC BY-NC "
            "3.0), with its official folds: slices of one recording never "
            "land in two splits."
        )
    else:
        folds = f", {info['n_folds']} folds" if info["n_folds"] else ""
        split = info["split"] or "not recorded"
        lines.append(f"{source.capitalize()} in {where}{folds}; split {split}.")
    lines.append("")
    for split in ("train", "valid", "test"):
        folds = info["folds"].get(split)
        clips = info["clips"].get(split)
        if folds is None and clips is None:
            continue
        detail = f"fold(s) {', '.join(map(str, folds))}" if folds else ""
        if clips is not None:
            detail += f"{', ' if detail else ''}{clips} clips"
        lines.append(f"- {split}: {detail}")
    if info["leaky"]:
        lines.append(
            "- **Leaky random split** (`--leaky-random-split`): these "
            "numbers are not comparable to published results."
        )
    if info.get("pretrained"):
        lines += ["", "## Pretrained encoder", "", info["pretrained"]]
    lines += ["", "## Results", ""]
    if info["test"]:
        lines.append(
            f"Test accuracy **{format_pct(test.get('accuracy'))}** on "
            f"{test.get('n_clips', '?')} clips (`test_results.json`; "
            "per class in the table above)."
        )
    else:
        lines.append(
            "No test results: this folder was exported from a run that was "
            "not tested (or from untrained weights)."
        )
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s.items()]
    lines += [f"| {k} | `{v}` |" for k, v in modules.items()]
    lines += ["", "## Training", "", f"- Hardware: {info['hardware']}"]
    history = info["history"]
    if info["train_seconds"] is not None and history:
        last = history[-1]
        lines.append(
            f"- Training time: {format_duration(info['train_seconds'])} over "
            f"{_plural(len(history), 'epoch')} (training stages; validation "
            "not counted)"
        )
        lines.append(
            f"- Last epoch: training accuracy "
            f"{format_pct(last.get('train_accuracy'))}, validation accuracy "
            f"{format_pct(last.get('valid_accuracy'))}"
        )
    else:
        lines.append("- Training time: not recorded (no history.json)")
    lines += ["", USAGE]
    return "\n".join(lines)


def write_model_card(folder, hparams):
    """Write ``<folder>/README.md`` (atomically) for a run's model folder.

    Arguments
    ---------
    folder : str or Path
        The model folder (or the temporary folder it is built in).
    hparams : dict
        The run's loaded hyperparameters (``label_encoder`` filled).

    Returns
    -------
    Path
        The card.

    Example
    -------
    See ``tests/test_card.py``.
    """
    encoder = hparams["label_encoder"]
    labels = [encoder.ind2lab[i] for i in range(len(encoder))]
    info = card_info(hparams, labels)
    model = info["modules"].get("embedding_model", "model")
    name = f"sb-urbansound {model} sound classifier"
    return atomic_write_text(Path(folder) / CARD_FILE, model_card(info, name))


def card_metadata(text):
    """The YAML front matter of a card, as a dict.

    Arguments
    ---------
    text : str
        The card.

    Returns
    -------
    dict
        The metadata.

    Example
    -------
    >>> card_metadata("---\\nlibrary_name: speechbrain\\n---\\n# x")
    {'library_name': 'speechbrain'}
    """
    if not text.startswith("---\n"):
        raise ValueError("a model card starts with --- and YAML metadata")
    end = text.index("\n---\n", 4)
    return json.loads(json.dumps(read_yaml(text[4:end])))
