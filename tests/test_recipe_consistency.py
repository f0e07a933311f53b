"""The checks SpeechBrain runs on a recipe, re-implemented to run in our CI.

SpeechBrain's own checks live in its repository's ``tests/`` (not in the pip
wheel); ``tools/upstream_check.sh`` runs them on a SpeechBrain checkout. These
tests apply the same rules here, so that drift shows up before a pull request:

* every top-level YAML key that the YAML does not use itself is read by the
  recipe's ``train.py`` (SpeechBrain's ``test_yaml_script_consistency``);
* every YAML of the recipe folder has a row with debug flags in
  ``tests/recipes/UrbanSound8k.csv``, and every file a row names exists;
* every YAML loads with only ``data_folder`` and ``output_folder`` given
  (SpeechBrain's ``load_yaml_test``);
* every row runs as SpeechBrain's ``run_recipe_tests`` runs it, on the CPU,
  and leaves the files its checks name;
* the recipe folder holds no link that leaves it, and the sample data is
  small;
* the recipe's Brain is made of SpeechBrain's usual hooks (no override of
  ``make_dataloader``, ``fit``, ``evaluate`` or a private method).
"""

import ast
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HPARAMS, RECIPE, REPO, TRAIN_PY

RECIPE_CSV = REPO / "tests" / "recipes" / "UrbanSound8k.csv"
SAMPLES = REPO / "tests" / "samples"
YAMLS = sorted(p.name for p in HPARAMS.glob("*.yaml"))


def yaml_keys_to_check(text):
    """Top-level keys that the YAML itself never references with ``<key>``.

    Lines with ``!apply`` (run for their side effect) and ``!!`` are skipped,
    as SpeechBrain's check does, and so is the pretrainer's definition.
    """
    keys, referenced = [], set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if "speechbrain.utils.parameter_transfer.Pretrainer" in line:
            continue
        match = re.match(r"([A-Za-z_][\w]*)\s*:", line)
        if match and "!apply" not in line and "!!" not in line:
            keys.append(match.group(1))
        if "!ref" in line:
            for ref in re.findall(r"<([^<>]+)>", line):
                referenced.add(ref.split("[")[0])
    return [k for k in keys if k not in referenced]


def script_reads(script_text, key):
    """Whether ``train.py`` reads ``key`` in one of the forms SpeechBrain
    finds."""
    forms = [
        f'["{key}"]',
        f"hparams.{key}",
        f"modules.{key}",
        f'attr(self.hparams, "{key}',
        f'hparams.get("{key}',
    ]
    if any(form in script_text for form in forms):
        return True
    # hparams[f"{split}_annotation"]: any key ending with the literal part
    for suffix in re.findall(r'\[f"\{[^}]*\}([^"]*)"\]', script_text):
        if suffix and key.endswith(suffix):
            return True
    return False


def run_option_names():
    """SpeechBrain's run options (they may be set in a YAML, e.g. ``debug``)."""
    from speechbrain.utils.run_opts import RunOptions

    return set(RunOptions().as_dict())


def recipe_rows():
    with open(RECIPE_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, skipinitialspace=True))


@pytest.mark.parametrize("name", YAMLS)
def test_every_yaml_key_is_read_by_the_script(name):
    script = TRAIN_PY.read_text(encoding="utf-8")
    keys = yaml_keys_to_check((HPARAMS / name).read_text(encoding="utf-8"))
    run_options = run_option_names()
    unused = [
        k for k in keys if k not in run_options and not script_reads(script, k)
    ]
    assert not unused, f"{name}: keys not read by train.py: {unused}"


def test_the_key_check_can_fail():
    text = "seed: 1\nunused_key: 3\nout: !ref results/<seed>\n"
    assert yaml_keys_to_check(text) == ["unused_key", "out"]
    assert not script_reads('x = hparams["out"]', "unused_key")
    assert script_reads('hparams[f"{s}_annotation"]', "test_annotation")


#: The Brain methods SpeechBrain's recipes override
BRAIN_HOOKS = {
    "compute_forward",
    "compute_objectives",
    "on_stage_start",
    "on_stage_end",
    "init_optimizers",
    "on_fit_start",
    "on_fit_batch_start",
    "on_fit_batch_end",
    "on_evaluate_start",
}


def brain_methods(script_text):
    """The methods of the script's ``sb.Brain`` subclass, in order."""
    (brain,) = [
        node
        for node in ast.parse(script_text).body
        if isinstance(node, ast.ClassDef)
        and any(getattr(base, "attr", None) == "Brain" for base in node.bases)
    ]
    return [f.name for f in brain.body if isinstance(f, ast.FunctionDef)]


def test_the_recipe_brain_is_made_of_speechbrains_hooks():
    methods = brain_methods(TRAIN_PY.read_text(encoding="utf-8"))
    assert len(methods) <= 8, methods
    assert set(methods) <= BRAIN_HOOKS, sorted(set(methods) - BRAIN_HOOKS)


def test_the_brain_check_can_fail():
    text = "import speechbrain as sb\nclass B(sb.Brain):\n    def fit(s): 0\n"
    assert brain_methods(text) == ["fit"]


def test_every_yaml_has_a_recipe_row():
    rows = recipe_rows()
    listed = {row["Hparam_file"].strip() for row in rows}
    for path in sorted((REPO / "recipes" / "UrbanSound8k").rglob("*.yaml")):
        rel = path.relative_to(REPO).as_posix()
        assert rel in listed, f"{rel} has no row in {RECIPE_CSV.name}"
    for row in rows:
        assert row["test_debug_flags"].strip(), row["Hparam_file"]
        for field in (
            "Script_file",
            "Hparam_file",
            "Data_prep_file",
            "Readme_file",
        ):
            for file in row[field].split():
                assert (REPO / file).exists(), f"{field} {file} does not exist"


def test_no_link_leaves_the_recipe_folder():
    root = REPO / "recipes"
    for path in root.rglob("*"):
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            assert str(target).startswith(str(root.resolve()) + os.sep), path


def test_sample_data_is_small():
    size = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert size < 1_000_000, f"tests/samples holds {size} bytes"


LOAD_YAMLS = """
import json, sys, traceback
from hyperpyyaml import load_hyperpyyaml
errors = {}
for name in sys.argv[3:]:
    try:
        with open(f"hparams/{name}", encoding="utf-8") as f:
            load_hyperpyyaml(
                f, {"data_folder": sys.argv[1], "output_folder": sys.argv[2]}
            )
    except Exception:
        errors[name] = traceback.format_exc()[-2000:]
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def yaml_load_errors(tmp_path_factory):
    """Every YAML loaded as SpeechBrain's load_yaml_test loads it: from the
    recipe folder, nothing else set; one Python for all (torch loads once).
    Returns {YAML: the end of its traceback} for those that fail."""
    tmp = tmp_path_factory.mktemp("load_yaml")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_YAMLS,
            str(tmp / "data"),
            str(tmp / "out"),
            *YAMLS,
        ],
        cwd=RECIPE,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_loads_with_only_the_folders(name, yaml_load_errors):
    assert name not in yaml_load_errors, yaml_load_errors[name]


def recipe_row_params():
    """The rows, each run as SpeechBrain runs it; the quick run
    (``-m "not slow"``) runs the first (cnn.yaml), CI runs them all."""
    return [
        pytest.param(
            row,
            marks=[pytest.mark.slow] if i else [],
            id=Path(row["Hparam_file"]).stem
            + (
                "-skip_prep"
                if "skip_prep=True" in row["test_debug_flags"]
                else ""
            ),
        )
        for i, row in enumerate(recipe_rows())
    ]


@pytest.mark.parametrize("row", recipe_row_params())
def test_recipe_row_runs_as_speechbrain_runs_it(row, tmp_path):
    script = row["Script_file"].strip()
    out = tmp_path / "out"
    cmd = (
        f"PYTHONPATH={REPO / Path(script).parent} {sys.executable} {script} "
        f"{row['Hparam_file'].strip()} {row['test_debug_flags'].strip()} "
        f"--device=cpu --output_folder={out} --debug --debug_persistently"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        cmd,
        shell=True,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = re.search(r"file_exists=\[(.*?)\]", row["test_debug_checks"])
    missing = [f for f in files.group(1).split(",") if not (out / f).exists()]
    assert not missing, f"missing outputs: {missing}"
