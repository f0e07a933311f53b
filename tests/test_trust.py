"""A model folder is code unless checked (``sb_urbansound.serving.trust``):
every route that made ``python -m sb_urbansound.serving.classify`` or ``export``
run a command, make a folder or evaluate more than a model needs is refused,
each line named, before anything is built; the model folders of every recipe
YAML pass, and they use exactly the allow-list.
"""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import HPARAMS, REPO, write_clip
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML
from sb_urbansound.serving import trust
from sb_urbansound.serving.export import untrained_model_folder
from sb_urbansound.serving.inference import make_inference_yaml

# Each route (appended to a model's hyperparams.yaml) ran `touch PWNED`, made
# the folder PWNED, or was evaluated, before the check refused it
PWN = '["touch", "PWNED"]'
ROUTES = {
    "a module that imports subprocess": (
        f"pwn: !new:sb_urbansound.training.crossval.subprocess.Popen [{PWN}]"
    ),
    "superpowers": (
        f"pwn: !new:speechbrain.utils.superpowers.subprocess.Popen [{PWN}]"
    ),
    "a !! tag": 'pwn: !!python/object/apply:os.system ["touch PWNED"]',
    "a verbatim tag": (
        "pwn: !<tag:yaml.org,2002:python/object/apply:os.system> "
        '["touch PWNED"]'
    ),
    "a %TAG directive": 'pwn: !e!os.system ["touch PWNED"]',
    "a tag on a key": '? !!python/object/apply:os.system ["touch PWNED"]\n: x',
    "a class that makes a folder": (
        "pwn: !new:speechbrain.utils.checkpoints.Checkpointer "
        "{checkpoints_dir: PWNED}"
    ),
    "a function that a class calls": (
        "pwn: !new:speechbrain.lobes.models.Xvector.Xvector {activation: "
        '!name:speechbrain.utils.superpowers.run_shell ["touch PWNED"], '
        "tdnn_blocks: 1, tdnn_channels: [4], tdnn_kernel_sizes: [1], "
        "tdnn_dilations: [1], lin_neurons: 4, in_channels: 4}"
    ),
    "an explicit !tuple": (
        'pwn: !tuple "(!!python/object/apply:os.system [touch PWNED])"'
    ),
    "a string in parentheses": (
        "pwn: '(!!python/object/apply:os.system [touch PWNED])'"
    ),
    "an attribute reference": "pwn: !ref <label_encoder.__class__>",
    "an expression": "pwn: !ref \"'x' * 99999999999999999999 * <sample_rate>\"",
    "a string that a reference evaluates": (
        "s: \"'x' * 99999999999999999999 * <sample_rate>\"\npwn: !ref <s>"
    ),
    "anchors and aliases": "a: &a [x, x]\nb: &b [*a, *a]\npwn: [*b, *b]",
    "a merge key": "pwn: {<<: {sample_rate: 8000}}",
    "a run option": "compile: true",
}
TAG_DIRECTIVE = "%TAG !e! tag:yaml.org,2002:python/object/apply:\n---\n"
# Not needed either: refused, named
UNNEEDED = [
    "pwn: !copy <sample_rate>",
    "pwn: !PLACEHOLDER",
    "pwn: !module:torch",
    "pwn: !include:other.yaml",
    "pwn: !applyref:sb_urbansound.training.models.CNNEmbedding.pooled_size [2]",
    "pwn: !ref <pwn>",
    "pwn: !new:sb_urbansound.training.models.CNNEmbedding.pooled_size [2]",
    "1: x",
]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """An untrained model folder of cnn.yaml, small."""
    root = tmp_path_factory.mktemp("trust")
    over = {"sample_rate": 8000, "duration_ms": 500}
    return untrained_model_folder(
        HPARAMS / "cnn.yaml", root / "model", ["a", "b"], over
    )


def append(model_folder, tmp_path, lines, prefix=""):
    """Copy the folder to tmp_path/M, add lines; the first added line's
    number."""
    folder = tmp_path / "M"
    shutil.copytree(model_folder, folder)
    path = folder / "hyperparams.yaml"
    text = path.read_text()
    path.write_text(prefix + text + "\n".join(lines) + "\n")
    return (prefix + text).count("\n") + 1


def run(tmp_path, *args):
    """``python -m <args>`` in tmp_path (where PWNED would be made)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_refused(result, tmp_path, lines):
    """Exit 2, one line naming each line, nothing run or made."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: M/hyperparams.yaml ")
    for line in lines:
        assert f"line {line}: " in result.stderr
    assert "--trust-model" in result.stderr
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_model_folder_that_runs_more_than_a_model_is_refused_by_classify(
    model_folder, tmp_path, route
):
    prefix = TAG_DIRECTIVE if route == "a %TAG directive" else ""
    first = append(model_folder, tmp_path, [ROUTES[route]], prefix)
    write_clip(tmp_path / "clip.wav", sample_rate=8000, seconds=0.5)
    result = run(tmp_path, "sb_urbansound.serving.classify", "M", "clip.wav")
    assert_refused(result, tmp_path, [first])


def test_export_refuses_them_too_naming_every_line(model_folder, tmp_path):
    routes = list(ROUTES.values()) + UNNEEDED
    lines = [r.replace("pwn:", f"pwn{i}:") for i, r in enumerate(routes)]
    lines = [r.replace("<pwn>", f"<pwn{i}>") for i, r in enumerate(lines)]
    first = append(model_folder, tmp_path, lines, TAG_DIRECTIVE)
    numbers = [
        first + sum(r.count("\n") + 1 for r in lines[:i])
        for i in range(len(lines))
    ]
    result = run(tmp_path, "sb_urbansound.serving.export", "M")
    assert_refused(result, tmp_path, numbers)
    assert not list((tmp_path / "M").glob("model.*"))  # nothing exported
    assert not (tmp_path / "M" / ".lock").exists()  # nothing written at all


def recipe_model_yaml(name):
    """The hyperparams.yaml that training with hparams/<name> writes."""
    values = {"data_folder": "/no/data", "output_folder": "/no/out"}
    text = resolve_references((HPARAMS / name).read_text(), values).getvalue()
    tree = YAML().load(text)
    modules = [k for k, v in tree["modules"].items() if v is not None]
    rate, channels = tree["sample_rate"], tree["channels"]
    return make_inference_yaml(text, modules, rate, channels, 1000)


def test_the_model_folders_of_every_recipe_yaml_use_exactly_the_allow_list(
    tmp_path,
):
    used = set()
    for name in sorted(p.name for p in HPARAMS.glob("*.yaml")):
        path = tmp_path / name
        path.write_text(recipe_model_yaml(name))
        trust.check_model_yaml(path)
        for event in YAML().parse(path.read_text()):
            kind, _, dotted = (getattr(event, "tag", None) or "").partition(":")
            if kind in ("!new", "!name", "!apply"):
                obj = trust._locate(dotted)
                used.add(f"{kind}:{obj.__module__}.{obj.__qualname__}")
    assert used == set(trust.ALLOWED)


def test_the_yaml_that_is_checked_is_the_yaml_that_is_loaded(
    model_folder, tmp_path, monkeypatch
):
    # Reading the file again after the check would load whatever another
    # process wrote in between: here, a line that makes a folder.
    from sb_urbansound.serving import inference

    folder = tmp_path / "M"
    shutil.copytree(model_folder, folder)
    made = tmp_path / "PWNED"
    real_check = inference.check_model_yaml

    def check_then_swap(path, *args):
        real_check(path, *args)
        with open(path, "a") as f:
            f.write(f'\npwn: !apply:os.mkdir ["{made}"]\n')

    monkeypatch.setattr(inference, "check_model_yaml", check_then_swap)
    model = inference.load_model(folder)
    assert model.hparams.label_encoder is not None
    assert not made.exists()


def test_sizes_that_outgrow_the_weights_are_refused_before_they_are_made(
    model_folder, tmp_path
):
    # An allowed class given huge sizes: 800 MB of weights for a folder
    # whose checkpoints hold well under 1 MB, allocated (and initialised)
    # before the checkpoint's shapes refused it.
    folder = tmp_path / "M"
    shutil.copytree(model_folder, folder)
    path = folder / "hyperparams.yaml"
    text = path.read_text()
    small = "  input_size: 64\n  n_classes: 2\n"
    assert small in text
    path.write_text(
        text.replace(small, "  input_size: 100000\n  n_classes: 2000\n")
    )
    write_clip(tmp_path / "clip.wav", sample_rate=8000, seconds=0.5)
    result = run(tmp_path, "sb_urbansound.serving.classify", "M", "clip.wav")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert "hyperparams.yaml builds more than" in line, line
    assert "copy the whole model folder" in line.lower()
