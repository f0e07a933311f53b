"""A run's options and output folder: checked options, and a folder that is
locked, cleaned after kills, and never resumed with other settings.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from sb_urbansound.atomic import (
    FolderLock,
    atomic_write_bytes,
    atomic_write_json,
    claim_folder,
    open_store_file,
    read_store_json,
    remove_stale_temps,
)
from sb_urbansound.errors import UserError
from sb_urbansound.serving.runtime import MAX_RATE, MIN_RATE
from sb_urbansound.yaml_reader import Tagged, read_yaml

logger = logging.getLogger(__name__)


def set_override(overrides, key, value):
    """Set one top-level key in SpeechBrain's YAML overrides string.

    Arguments
    ---------
    overrides : str
        The overrides (``key: value`` lines; may be empty).
    key : str
        A top-level YAML key.
    value : int, float, bool or str
        Its new value, written as YAML.

    Returns
    -------
    str
        The new overrides.

    Example
    -------
    >>> set_override("lr: 0.1\\nn_classes: 0\\n", "n_classes", 4)
    'lr: 0.1\\nn_classes: 4\\n'
    """
    kept = re.sub(rf"(?m)^{re.escape(key)}:.*(\n|$)", "", overrides or "")
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return f"{kept}{key}: {value}\n"


def _whole(minimum, maximum=None):
    """A check: a whole number (not a bool) in ``[minimum, maximum]``."""
    return lambda v: (
        isinstance(v, int)
        and not isinstance(v, bool)
        and minimum <= v <= (v if maximum is None else maximum)
    )


def _number(low, high=None, low_open=True):
    """A check: a real number in ``(low, high)`` (``[low, ...`` if closed)."""
    return lambda v: (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (v > low if low_open else v >= low)
        and (high is None or v < high)
    )


#: The values of ``data_source`` (``sb_urbansound.data.loader``).
DATA_SOURCES = ("files", "bank", "feature_bank", "shards")
#: Keys checked before anything is built: the check, and what is valid.
CHECKED_KEYS = {
    "batch_size": (_whole(1), "a whole number >= 1"),
    "number_of_epochs": (_whole(1), "a whole number >= 1"),
    "channels": (_whole(1), "a whole number >= 1 (1: mono, 2: stereo)"),
    "sample_rate": (
        _whole(MIN_RATE, MAX_RATE),
        f"a sample rate in Hz, {MIN_RATE} to {MAX_RATE}",
    ),
    "duration_ms": (_number(0), "a clip length in milliseconds > 0"),
    "n_classes": (_whole(0), "0 (as many as the data has) or a whole number"),
    "shift_pct": (_number(0, 1, low_open=False), "a fraction in [0, 1)"),
    "num_workers": (_whole(0), "a whole number >= 0"),
    "n_folds": (_whole(1), "a whole number >= 1"),
    "lr": (_number(0), "a learning rate > 0"),
    "max_lr": (_number(0), "a learning rate > 0"),
    "n_mels": (_whole(1), "a whole number >= 1"),
    "n_fft": (_whole(16), "a whole number of samples >= 16"),
    "hop_length": (_number(0), "a hop > 0 (samples, or ms in some YAMLs)"),
    "top_db": (
        lambda v: v is None or _number(0)(v),
        "a dynamic range in dB > 0, or null",
    ),
    "max_mask_pct": (
        _number(0, 1, low_open=False),
        "a fraction of the bands or frames in [0, 1)",
    ),
    "data_source": (
        lambda v: v in DATA_SOURCES,
        ", ".join(DATA_SOURCES[:-1]) + " or " + DATA_SOURCES[-1],
    ),
    "test_checkpoint": (lambda v: v in ("best", "last"), "best or last"),
    "shard_size": (_whole(1), "a whole number of clips >= 1"),
    "shard_format": (lambda v: v in ("int16", "flac"), "int16 or flac"),
    "shuffle_buffer": (_whole(1), "a whole number of clips >= 1"),
}


def _combination_errors(values):
    """Messages for values that are valid alone but not together."""
    errors = []
    rate, ms = values.get("sample_rate"), values.get("duration_ms")
    n_fft, n_mels = values.get("n_fft"), values.get("n_mels")
    if isinstance(rate, int) and isinstance(ms, (int, float)):
        samples = int(round(rate * ms / 1000.0))
        if isinstance(n_fft, int) and n_fft > samples:
            errors.append(
                f"duration_ms={ms} at sample_rate={rate} is {samples} "
                f"samples, shorter than one FFT window (n_fft={n_fft}): use "
                "a longer duration_ms or a smaller n_fft"
            )
    if isinstance(n_fft, int) and isinstance(n_mels, int):
        bins = n_fft // 2 + 1
        if n_mels > bins:
            errors.append(
                f"n_mels={n_mels} is more than the {bins} frequency bins of "
                f"n_fft={n_fft}: most mel bands would be empty; use "
                f"n_mels <= {bins} or a larger n_fft"
            )
    f_max = values.get("f_max")
    if isinstance(rate, int) and isinstance(f_max, (int, float)):
        if not 0 < f_max <= rate / 2:
            errors.append(
                f"f_max={f_max} is not in (0, sample_rate / 2 = {rate / 2}]"
            )
    return errors


def read_yaml_values(hparams_file, overrides=""):
    """The YAML's top-level values with overrides, building nothing: ``!ref``
    resolved as ``load_hyperpyyaml`` would, other tags as ``Tagged``.

    Arguments
    ---------
    hparams_file : str or Path
        The YAML file.
    overrides : str
        YAML overrides (SpeechBrain's format).

    Returns
    -------
    dict
        The top-level values (a UserError names a key given twice, unknown,
        or required and unset).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "h.yaml").write_text("seed: 1\\nout: !ref r/<seed>\\n")
    >>> read_yaml_values(tmp / "h.yaml", "seed: 7")["out"]
    'r/7'
    >>> h = tmp / "h.yaml"
    >>> read_yaml_values(h, "sede: 7")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: unknown option --sede: ...
    (did you mean --seed?)...
    """
    import difflib

    from hyperpyyaml import resolve_references

    seen = []  # the overrides' top-level keys (not a value's next lines)
    for line in (overrides or "").splitlines():
        key = line.split(":", 1)[0].strip()
        if key and not line[:1].isspace():
            if key in seen:
                raise UserError(
                    f"--{key} is given twice on the command line; give it once"
                )
            seen.append(key)
    try:
        read_yaml(overrides or "")
    except UserError as error:
        e = error.__cause__
        mark = getattr(e, "problem_mark", None)
        line = overrides.splitlines()[mark.line if mark else 0]
        key, _, value = (part.strip() for part in line.partition(":"))
        raise UserError(
            f"--{key}={value} is not a valid YAML value "
            f"({getattr(e, 'problem', e)}): quote a value that holds YAML's "
            "signs ([ ] { } # , &), such as a regular expression: "
            f"--{key}=\"'{value}'\""
        ) from None
    try:
        text = Path(hparams_file).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(
            f"cannot read the YAML file {hparams_file}: {e}"
        ) from None
    keys = list(read_yaml(text, name=hparams_file) or {})
    for key in seen:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f" (did you mean {', '.join('--' + k for k in close)}?)"
            raise UserError(
                f"unknown option --{key}: {hparams_file} has no such key"
                + (hint if close else "")
                + "; SpeechBrain's run options are listed by --help"
            )
    try:
        resolved = resolve_references(io.StringIO(text), overrides)
    except ValueError as e:
        ref = re.search(r'The reference "([^"]*)" is not valid', str(e))
        if ref:
            raise UserError(
                f"a value refers to <{ref.group(1)}>, which is no key: "
                "HyperPyYAML reads <name> in a value as a reference to a key. "
                "In a regular expression (group_pattern), write a plain group "
                f"in parentheses instead of (?P<{ref.group(1)}>...)"
            ) from None
        match = re.search(r"'(\w+)' is a !PLACEHOLDER", str(e))
        if not match:
            raise
        key = match.group(1)
        raise UserError(
            f"{key} is required: pass --{key}=... on the command line"
        ) from None
    return dict(read_yaml(resolved) or {})


def check_values(values, hparams_file="the YAML"):
    """Check the values of :data:`CHECKED_KEYS`, and those that must fit
    together (clip length, FFT size, mel bands, ``f_max``, sample rate).

    Arguments
    ---------
    values : dict
        Top-level values (from :func:`read_yaml_values`).
    hparams_file : str or Path
        Named in the message.

    Example
    -------
    >>> check_values({"batch_size": 0})
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: batch_size=0 is not valid: ...
    >>> big = {"sample_rate": 2147483647}
    >>> check_values(big)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: sample_rate=2147483647 is not valid:
    sample_rate must be a sample rate in Hz, 1000 to 768000 ...
    """
    for key, (check, allowed) in CHECKED_KEYS.items():
        value = values.get(key)
        if key in values and not isinstance(value, Tagged) and not check(value):
            raise UserError(
                f"{key}={values[key]!r} is not valid: {key} must be {allowed} "
                f"(from {hparams_file} or --{key}=...)"
            )
    errors = _combination_errors(values)
    if errors:
        raise UserError(
            "these options do not fit together (from "
            f"{hparams_file} or the command line):\n  " + "\n  ".join(errors)
        )


#: Where a run records what it was started with (in its output folder).
RUN_SETTINGS_FILE = "run_settings.json"
#: Keys that may change when a run resumes: they shape neither the model nor
#: the data (the data is compared through the manifests).
RUN_ONLY_KEYS = set(
    "number_of_epochs pretrained_encoder use_pretrained pretrainer "
    "bank_folder data_source shards_folder shard_size shard_format "
    "shuffle_buffer epoch_counter checkpointer num_workers "
    "ckpt_interval_minutes dataloader_options test_dataloader_options "
    "n_classes data_folder download skip_missing skip_prep prepare "
    "train_annotation valid_annotation test_annotation".split()
)


def _canonical(value, replacements):
    """A JSON-able form of a YAML value, with folder paths replaced."""
    if isinstance(value, Tagged):
        return {value.tag: _canonical(value.value, replacements)}
    if isinstance(value, dict):
        return {str(k): _canonical(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, replacements) for v in value]
    if isinstance(value, str):
        for text, name in replacements:
            if text:
                value = value.replace(text, name)
    return value


def run_settings(values):
    """The settings that shape a run, as JSON: all top-level keys but
    :data:`RUN_ONLY_KEYS` and ``__`` keys, paths relative to the folders.

    Arguments
    ---------
    values : dict
        Resolved top-level values (:func:`read_yaml_values`).

    Returns
    -------
    dict
        Key to canonical value.

    Example
    -------
    >>> run_settings({"output_folder": "/r", "log": "/r/log.txt", "seed": 1})
    {'log': '<output_folder>/log.txt', 'seed': 1}
    """
    replacements = [
        (str(values.get("output_folder") or ""), "<output_folder>"),
        (str(values.get("data_folder") or ""), "<data_folder>"),
    ]
    return {
        key: _canonical(value, replacements)
        for key, value in values.items()
        if key not in RUN_ONLY_KEYS
        and not key.startswith("__")
        and key != "output_folder"
    }


def _data_signature(manifests):
    """``{split: {"clips", "sha256"}}`` of the manifests' ids and labels.

    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "t.json").write_text('{"a": {"label": "dog", "wav": "/x"}}')
    >>> _data_signature({"train": tmp / "t.json"})["train"]["clips"]
    1
    """
    signature = {}
    for split, path in manifests.items():
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = "".join(
            f"{c}\0{entries[c].get('label')}\n" for c in sorted(entries)
        )
        digest = hashlib.sha256(rows.encode()).hexdigest()
        signature[split] = {"clips": len(entries), "sha256": digest}
    return signature


def differences(old, new, limit=8):
    """Lines ``key: old -> new`` for the keys whose values differ.

    Arguments
    ---------
    old, new : dict
        Settings (JSON-able).
    limit : int
        Lines listed before "... and N more".

    Returns
    -------
    list of str
        The lines.

    Example
    -------
    >>> differences({"lr": 0.1, "seed": 1}, {"lr": 0.01, "seed": 1})
    ['lr: 0.1 -> 0.01']
    """
    lines = [
        f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def _is_inside(path, folder):
    """Whether ``path`` is ``folder`` or inside it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_outside(data_folder, folders):
    """Refuse folders we write that are inside the (read-only) data folder.

    Arguments
    ---------
    data_folder : str or Path
        The data.
    folders : dict
        ``{option name: folder}`` of the folders a run writes.

    Example
    -------
    >>> folders = {"output_folder": "/data/us8k/out"}
    >>> check_outside("/data/us8k", folders)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: output_folder /data/us8k/out is inside
    data_folder /data/us8k...
    """
    if not data_folder:
        return
    for name, folder in folders.items():
        if folder and _is_inside(folder, data_folder):
            raise UserError(
                f"{name} {folder} is inside data_folder {data_folder}: a run "
                "never writes into the data. Choose a folder outside it."
            )


class RunFolder:
    """The output folder of one run: locked, cleaned, bound to its settings
    (a run is never resumed with other settings or another data split).

    Arguments
    ---------
    output_folder : str or Path
        The run's output folder.
    save_folder : str or Path, optional
        Its checkpoint folder (default ``<output_folder>/save``).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> run = RunFolder(tmp / "out")
    >>> run.lock()
    >>> run.check_settings({"seed": 1})
    >>> run.check_data({})
    >>> RunFolder(tmp / "out").lock()
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.BusyError: this process already holds the lock ...
    >>> run.unlock()
    """

    def __init__(self, output_folder, save_folder=None):
        self.folder = Path(output_folder)
        self.save_folder = Path(save_folder or self.folder / "save")
        self.settings_file = self.folder / RUN_SETTINGS_FILE
        self._lock = None
        self._settings = None

    def lock(self):
        """Claim and lock the folder (new, empty or ours; UserError if not,
        if locked or if it holds a link); remove what killed runs left behind.
        """
        claim_folder(self.folder, "run")
        if not _is_inside(self.save_folder, self.folder):
            claim_folder(self.save_folder, "checkpoints", what="save_folder")
        self._lock = FolderLock(self.folder, "writing to").acquire()
        # SpeechBrain writes files here by name, following links: refuse
        # links. Not the lock file: closing it would drop our POSIX lock.
        for path in self.folder.iterdir():
            if not path.is_dir() and path != self._lock.path:
                with contextlib.suppress(OSError):  # unreadable, or gone
                    os.close(open_store_file(path))
        for folder in [self.folder, *self.folder.iterdir()]:
            if folder.is_dir() and not folder.is_symlink():
                for path in remove_stale_temps(folder):
                    logger.info("Removed %s, left by an interrupted run", path)

    def unlock(self):
        """Release the lock (it is also released when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def has_progress(self):
        """Whether the folder holds a checkpoint or test results."""
        return (self.folder / "test_results.json").exists() or any(
            self.save_folder.glob("CKPT+*")
        )

    def check_settings(self, values):
        """Refuse (UserError, listing the differences) to resume with other
        settings; call before data preparation.

        Arguments
        ---------
        values : dict
            Resolved top-level values of this start (:func:`read_yaml_values`).
        """
        self._settings = run_settings(values)
        self._compare("settings", self._settings, "other settings")

    def check_data(self, manifests):
        """Refuse (UserError) to resume on another data split; record this
        start's settings.

        Arguments
        ---------
        manifests : dict
            ``{split: manifest path}`` of this start.
        """
        data = _data_signature(manifests)
        self._compare("data", data, "another data split")
        atomic_write_json(
            self.settings_file, {"settings": self._settings or {}, "data": data}
        )

    def _compare(self, section, new, what):
        """Refuse to resume a run whose recorded ``section`` differs."""
        recorded = read_store_json(self.settings_file)
        if recorded is None or not self.has_progress():
            return
        diff = differences(recorded.get(section, {}), new)
        if diff:
            raise UserError(
                f"{self.folder} holds a run started with {what}; resuming "
                "it would test a model on the wrong clips or train another "
                "model on:\n  "
                + "\n  ".join(diff)
                + f"\nUse a new --output_folder, or delete {self.folder} to "
                "start again there."
            )


def write_environment(folder):
    """Write ``env.log`` as SpeechBrain does, with this Python's packages.

    Ours: SpeechBrain's ``pip freeze`` in a shell runs the first ``pip`` on
    ``PATH`` (maybe another environment's) and is slow.

    Arguments
    ---------
    folder : str or Path
        The run's output folder; ``env.log`` is replaced atomically.

    Example
    -------
    >>> write_environment(getfixture("tmp_path"))
    >>> text = (getfixture("tmp_path") / "env.log").read_text()
    >>> f"torch=={importlib.metadata.version('torch')}" in text.splitlines()
    True
    """
    import torch  # only here: crossval reads this module and needs no torch

    dists = importlib.metadata.distributions()
    packages = {f"{d.name}=={d.version}" for d in dists if d.name}
    cmd = ["git", "rev-parse", "--short", "HEAD"]
    try:  # as SpeechBrain's: the revision of the current folder's checkout
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        git = f"Git revision:\n{run.stdout}"
    except (OSError, subprocess.SubprocessError):
        git = "Could not get git revision"
    if not torch.cuda.is_available():
        cuda = "CUDA not available"
    elif torch.version.cuda is None:
        cuda = f"ROCm version:\n{torch.version.hip}"
    else:
        cuda = f"CUDA version:\n{torch.version.cuda}"
    rule = "=" * 30 + "\n"
    text = (
        f"SpeechBrain system description\n{rule}Python version:\n"
        f"{sys.version}\n{rule}Installed Python packages:\n"
        + "".join(f"{p}\n" for p in sorted(packages, key=str.lower))
        + f"{rule}{git}{rule}{cuda}\n"
    )
    atomic_write_bytes(Path(folder) / "env.log", text.encode())


def build_partial(node, key="prepare"):
    """The function of a HyperPyYAML ``!name:`` node with its arguments, so
    that data preparation can run before the models are built.

    Arguments
    ---------
    node : Tagged
        A ``!name:module.function`` node with plain arguments.
    key : str
        The key, for error messages.

    Returns
    -------
    functools.partial
        The function with its arguments.

    Example
    -------
    >>> node = Tagged("!name:builtins.round", {"number": 2.567, "ndigits": 1})
    >>> build_partial(node)()
    2.6
    """
    import functools
    import pydoc

    if not isinstance(node, Tagged) or not node.tag.startswith("!name:"):
        raise UserError(f"{key} must be a !name: entry (a function to call)")
    func = pydoc.locate(node.tag[len("!name:") :])
    if func is None:
        raise UserError(f"{key}: cannot import {node.tag[len('!name:') :]}")
    args = node.value
    if isinstance(args, dict):
        return functools.partial(func, **args)
    return functools.partial(func, *(args if isinstance(args, list) else ()))
