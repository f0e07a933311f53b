"""K-fold cross-validation of a recipe as one resumable command: each listed
fold is tested once, by the recipe in a subprocess in
``<output_folder>/fold_<k>`` (``docs/crossval.md``).

Authors
-------
 * sb-urbansound contributors
"""

import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from sb_urbansound.atomic import (
    FolderLock,
    atomic_write_json,
    claim_folder,
    open_store_file,
)
from sb_urbansound.data.sources.folds import parse_fold_list
from sb_urbansound.errors import BusyError, DataPrepError, UserError
from sb_urbansound.training.checkpoints import STAGING
from sb_urbansound.training.experiment import (
    differences,
    read_yaml_values,
    run_settings,
)
from sb_urbansound.training.hardware import hardware_description
from sb_urbansound.training.processes import (
    STOP_SIGNALS,
    die_with_parent_preexec,
    handling,
    signal_name,
)

MIN_FOLDS = 3
FOLD_MARKER = "crossval_fold.json"
CROSSVAL_KIND = "crossval"
#: A finished fold's files: its test results and its model (written last).
FOLD_OUTPUTS = ("test_results.json", "model/hyperparams.yaml")
STOP_TIMEOUT_S = 30.0  # for the recipe to exit after a forwarded signal
FORWARDED_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)
FOLD_KEYS = ("train_fold_nums", "valid_fold_nums", "test_fold_nums")
LEAKY_KEY = "leaky_random_split"
OWN_KEYS = ("folds", "output_folder", LEAKY_KEY, *FOLD_KEYS)  # not passed on
BANK_KEY = "bank_folder"  # one bank for all folds: <output_folder>/bank


class CrossvalError(UserError, ValueError):
    """A problem with the cross-validation's arguments or output folder."""


class FoldFailedError(RuntimeError):
    """The recipe failed on one fold."""


class FoldInterrupted(KeyboardInterrupt):
    """A stop signal (``signum``) came while the recipe ran; it has ended."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class FoldPlan:
    """The folds of one run of a cross-validation.

    Arguments
    ---------
    test : int
        The test fold.
    valid : int
        The validation fold.
    train : tuple of int
        The training folds.

    Example
    -------
    >>> FoldPlan(test=1, valid=2, train=(3, 4)).name
    'fold_1'
    """

    test: int
    valid: int
    train: tuple

    @property
    def name(self):
        """The fold's subfolder name, ``fold_<test>``."""
        return f"fold_{self.test}"

    def record(self, leaky):
        """The assignment, as a fold's marker records it."""
        return {
            "test_fold": self.test,
            "valid_folds": [self.valid],
            "train_folds": list(self.train),
            "leaky_random_split": bool(leaky),
        }


def _as_fold_list(value, what):
    """A fold list, or a :class:`CrossvalError` that says what is wrong."""
    try:
        return parse_fold_list(value, what)
    except DataPrepError as e:
        raise CrossvalError(str(e)) from None


def recipe_script(hparams_file):
    """The recipe's ``train.py`` for a YAML file: ``<recipe>/hparams/x.yaml``.

    Arguments
    ---------
    hparams_file : str or Path
        A YAML file in a recipe's ``hparams`` folder (links are followed).

    Returns
    -------
    Path

    Example
    -------
    >>> recipe_script("no/hparams/x.yaml")
    Traceback (most recent call last):
     ...
    sb_urbansound.training.crossval.CrossvalError: no recipe script ...
    """
    script = Path(hparams_file).resolve().parent.parent / "train.py"
    if not script.is_file():
        raise CrossvalError(
            f"no recipe script {script} for {hparams_file}: the YAML must be "
            "in the hparams/ folder of a recipe (beside its train.py)"
        )
    return script


def import_recipe(script):
    """Import a recipe's ``train.py`` (its folder on ``sys.path``).

    Arguments
    ---------
    script : str or Path
        The recipe's ``train.py``.

    Returns
    -------
    module
    """
    import importlib.util

    script = Path(script).resolve()
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location("sb_recipe_train", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assign_folds(folds):
    """Plan a cross-validation: each fold is tested once, validated on the
    next listed fold (cyclically), trained on the rest.

    Arguments
    ---------
    folds : list of int
        The folds (at least 3, no duplicates).

    Returns
    -------
    list of FoldPlan
        Sorted by test fold.

    Example
    -------
    >>> [(p.test, p.valid, p.train) for p in assign_folds([3, 1, 2, 4])]
    [(1, 2, (3, 4)), (2, 3, (1, 4)), (3, 4, (1, 2)), (4, 1, (2, 3))]
    """
    folds = _as_fold_list(folds, "folds")
    dupes = sorted({f for f in folds if folds.count(f) > 1})
    if dupes:
        raise CrossvalError(f"folds listed more than once: {dupes}")
    if len(folds) < MIN_FOLDS:
        raise CrossvalError(
            f"cross-validation needs at least {MIN_FOLDS} folds (one to test, "
            f"one to validate, at least one to train); got {folds}"
        )
    folds = sorted(folds)
    valids = folds[1:] + folds[:1]
    return [
        FoldPlan(test, valid, tuple(f for f in folds if f not in (test, valid)))
        for test, valid in zip(folds, valids, strict=True)
    ]


USAGE = """\
usage: python -m sb_urbansound.training.crossval HPARAMS.yaml \
[--data_folder=DIR]
           [--output_folder=DIR] [--folds=[1,2,...]] [--leaky-random-split]
           [--key=value ...]

Runs the recipe once per listed fold (test = that fold, valid = the next listed
fold cyclically, train = the rest), each in <output_folder>/fold_<k>, resumably,
then writes crossval_results.json, crossval_report.md, confusion_matrix.png and
learning_curves.png to the output folder. Other --key=value arguments are passed
to the recipe for every fold (YAML overrides and SpeechBrain run flags).
See docs/crossval.md."""


def _is_true(text):
    """A YAML-ish boolean."""
    return str(text).strip().lower() in ("true", "yes", "1", "on")


def parse_crossval_args(argv):
    """Split the command line into crossval's options (:data:`OWN_KEYS`;
    the fold lists refused) and the rest; ``--help`` prints :data:`USAGE`.

    Arguments
    ---------
    argv : list of str
        The arguments after the program name.

    Returns
    -------
    types.SimpleNamespace
        ``hparams_file``; ``output_folder`` and ``folds`` (None: the YAML's);
        ``leaky``; ``passthrough`` (the rest, for the recipe); ``argv`` (all).

    Example
    -------
    >>> a = parse_crossval_args(
    ...     ["h.yaml", "--folds=1,2,3", "--leaky-random-split"]
    ... )
    >>> a.folds, a.leaky, parse_crossval_args(["h.yaml", "--x=1"]).passthrough
    ([1, 2, 3], True, ['--x=1'])
    """
    argv = list(argv)
    if any(arg in ("-h", "--help") for arg in argv):  # as argparse does
        print(USAGE)
        sys.exit(0)
    if not argv:
        raise CrossvalError(USAGE)
    if argv[0].startswith("-"):
        raise CrossvalError(
            "the first argument must be the recipe YAML\n" + USAGE
        )
    args = SimpleNamespace(hparams_file=argv[0], argv=argv, passthrough=[])
    args.output_folder = args.folds = None
    args.leaky = False
    rest = argv[1:] + ["--"]  # a sentinel: no value follows the last one
    i = 0
    while i < len(rest) - 1:
        token, nxt = rest[i], rest[i + 1]
        key, has_eq, value = token[2:].partition("=")
        norm = key.replace("-", "_")
        i += 1
        if not token.startswith("--") or norm not in OWN_KEYS:
            args.passthrough.append(token)
        elif norm in FOLD_KEYS:
            raise CrossvalError(
                f"--{key} is set by crossval for each fold; choose the folds "
                "to cross-validate over with --folds=[...] instead"
            )
        elif norm == LEAKY_KEY:
            # --leaky_random_split may take its value as the next argument
            takes = key != "leaky-random-split" and not nxt.startswith("--")
            args.leaky = _is_true(value if has_eq else nxt if takes else True)
            i += takes and not has_eq
        else:
            if not has_eq and nxt.startswith("--"):
                raise CrossvalError(f"--{key} needs a value")
            value, i = (value, i) if has_eq else (nxt, i + 1)
            if norm == "folds":
                args.folds = _as_fold_list(value, "--folds")
            else:
                args.output_folder = value
    return args


def _read_values(hparams_file, passthrough):
    """The YAML's values with ``passthrough``'s overrides (nothing built)."""
    from speechbrain.utils.run_opts import RunOptions

    try:
        _, _, overrides = RunOptions.from_command_line_args(
            [str(hparams_file)] + list(passthrough)
        )
    except SystemExit as e:  # argparse already printed why
        raise CrossvalError(f"invalid recipe arguments: {passthrough}") from e
    try:
        return read_yaml_values(hparams_file, overrides)
    except Exception as e:  # UserError, YAML parse errors and the like
        why = str(e)
        if not why.startswith("cannot read "):
            why = f"cannot read {hparams_file}: {why}"
        raise CrossvalError(why) from None


def read_recipe_settings(hparams_file, passthrough=()):
    """Read the fold lists, output folder and leaky flag of a recipe YAML, as
    the recipe would (:class:`CrossvalError` for a bad file).

    Arguments
    ---------
    hparams_file : str or Path
        The recipe YAML.
    passthrough : list of str
        Command-line overrides (``--key=value``) and SpeechBrain run flags.

    Returns
    -------
    dict
        ``folds`` (sorted union of the fold lists), the three fold lists,
        ``output_folder`` (str or None), ``leaky_random_split`` (bool),
        ``test_annotation`` (str or None) and ``keys`` (the top-level keys).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "h.yaml").write_text(
    ...     "seed: 1\\noutput_folder: !ref r/<seed>\\ntrain_fold_nums: [1]\\n"
    ...     "valid_fold_nums: [3]\\ntest_fold_nums: [4, 2]\\n"
    ... )
    >>> s = read_recipe_settings(tmp / "h.yaml", ["--seed=7"])
    >>> s["folds"], s["output_folder"], s["leaky_random_split"]
    ([1, 2, 3, 4], 'r/7', False)
    """
    if not Path(hparams_file).is_file():
        raise CrossvalError(f"recipe YAML not found: {hparams_file}")
    tree = _read_values(Path(hparams_file), passthrough)
    missing = [k for k in FOLD_KEYS if k not in tree]
    if missing:
        raise CrossvalError(
            f"{hparams_file} has no {', '.join(missing)}: crossval needs a "
            "recipe YAML with train_fold_nums, valid_fold_nums and "
            "test_fold_nums"
        )
    lists = {k: _as_fold_list(tree[k], k) for k in FOLD_KEYS}
    out, annotation = tree.get("output_folder"), tree.get("test_annotation")
    return {
        **lists,
        "folds": sorted({f for folds in lists.values() for f in folds}),
        "output_folder": None if out is None else str(out),
        "leaky_random_split": _is_true(tree.get(LEAKY_KEY, False)),
        "keys": set(tree.keys()),
        "test_annotation": annotation if isinstance(annotation, str) else None,
    }


def _fold_argv(hparams_file, plan, fold_dir, passthrough, leaky):
    """The recipe's command line for one fold."""
    lists = (plan.train, [plan.valid], [plan.test])
    argv = [str(hparams_file), *passthrough, f"--output_folder={fold_dir}"]
    argv += [
        f"--{key}=[{','.join(map(str, folds))}]"
        for key, folds in zip(FOLD_KEYS, lists, strict=True)
    ]
    return argv + ([f"--{LEAKY_KEY}=True"] if leaky else [])


def _run_forwarding_signals(cmd, what):
    """Run ``cmd``, forwarding stop signals (killed ``STOP_TIMEOUT_S`` after
    the first; :class:`FoldInterrupted` once it ended); return its status."""
    received, running = [], []  # [(signal, time, sent on)], [the process]

    def forward(signum, frame):
        if running:
            running[0].send_signal(signum)  # a no-op once it has ended
        received.append((signum, time.monotonic(), bool(running)))

    killed = False
    with handling(FORWARDED_SIGNALS, forward):
        try:
            proc = subprocess.Popen(cmd, preexec_fn=die_with_parent_preexec())
            running.append(proc)
            for signum, _, sent in list(received):  # while it was starting
                if not sent:
                    proc.send_signal(signum)
            while (code := proc.poll()) is None:
                if (
                    received
                    and time.monotonic() > received[0][1] + STOP_TIMEOUT_S
                ):
                    proc.kill()
                    code, killed = proc.wait(), True
                    break
                time.sleep(0.2)
        except BaseException:  # e.g. Ctrl-C where no handler could be set
            if running and running[0].poll() is None:
                try:
                    running[0].wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    running[0].kill()
                    running[0].wait()
            raise
    if not received:
        return code
    fate = (
        f"did not exit within {STOP_TIMEOUT_S:g} s of it and was killed"
        if killed
        else f"was stopped (exit status {code})"
    )
    signum = received[0][0]
    raise FoldInterrupted(signum, f"got {signal_name(signum)}; {what} {fate}")


def subprocess_runner(argv, fold_dir):
    """Run the recipe on one fold in a new process, signals forwarded
    (:class:`FoldFailedError` when it fails).

    Arguments
    ---------
    argv : list of str
        The recipe's arguments (the YAML first).
    fold_dir : Path
        The fold's output folder (for error messages).
    """
    cmd = [sys.executable, str(recipe_script(argv[0])), *argv]
    name = Path(fold_dir).name
    code = _run_forwarding_signals(cmd, what=f"the recipe on {name}")
    if code == 0:
        return
    log = Path(fold_dir) / "log.txt"
    where = f"; its log is {log}" if log.exists() else ""
    if code == BusyError.exit_status:  # another process holds the fold
        hint = (
            f"Another process is writing to {fold_dir} (see the message "
            "above): wait for it to finish, or stop it, then rerun."
        )
    elif code == UserError.exit_status:  # bad data, options or folders
        hint = "The recipe rejected the data or options: see its message above."
    else:
        hint = (
            "Rerun the same crossval command to resume: finished folds are "
            "skipped, the unfinished one resumes from its last checkpoint."
        )
    raise FoldFailedError(
        f"the recipe failed on {name} (exit status {code}){where}."
        f"\ncommand: {shlex.join(cmd)}\n{hint}"
    )


def _read_json(path):
    """A JSON file of a fold or of the cross-validation (never via a link)."""
    with open(open_store_file(path), encoding="utf-8") as f:
        return json.load(f)


def _started(fold_dir):
    """Whether a fold has test results or a ``CKPT+...`` checkpoint."""
    return (fold_dir / "test_results.json").exists() or any(
        p.is_dir() and STAGING not in p.parts
        for p in Path(fold_dir).rglob("CKPT+*")
    )


def _test_set_overlap(hparams_file, passthrough, plans, out_dir):
    """Clip ids in the test manifests of two folds (None: one is missing)."""
    seen, repeated = set(), set()
    for plan in plans:
        settings = read_recipe_settings(
            hparams_file,
            [*passthrough, f"--output_folder={out_dir / plan.name}"],
        )
        path = settings["test_annotation"]
        if not path or not Path(path).is_file():
            return None
        ids = set(_read_json(path))
        repeated |= seen & ids
        seen |= ids
    return sorted(repeated)


def fold_finished(fold_dir):
    """Whether a fold's run is complete (:data:`FOLD_OUTPUTS` exist).

    Arguments
    ---------
    fold_dir : str or Path
        The fold's output folder.

    Returns
    -------
    bool

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "test_results.json").write_text("{}")
    >>> fold_finished(tmp)  # no model/hyperparams.yaml
    False
    """
    return all((Path(fold_dir) / name).is_file() for name in FOLD_OUTPUTS)


def _fold_settings(hparams_file, recipe_argv):
    """A fold run's settings as JSON: the recipe's and the epochs."""
    values = _read_values(hparams_file, list(recipe_argv[1:]))
    settings = run_settings(values)
    if "number_of_epochs" in values:
        settings["number_of_epochs"] = values["number_of_epochs"]
    return json.loads(json.dumps(settings, default=str))


def _refuse_other_settings(plans, out_dir, wanted):
    """Refuse folds run (or started) with settings other than ``wanted``."""
    problems = []
    skip = {*FOLD_KEYS, LEAKY_KEY}  # the assignment is compared on its own
    for plan in plans:
        fold_dir = out_dir / plan.name
        marker = fold_dir / FOLD_MARKER
        recorded = _read_json(marker) if marker.is_file() else {}
        recorded = recorded.get("settings") if _started(fold_dir) else None
        if recorded is None:
            continue
        diff = differences(
            {k: v for k, v in recorded.items() if k not in skip},
            {k: v for k, v in wanted[plan.test].items() if k not in skip},
        )
        if diff:
            problems.append(f"{plan.name}:\n    " + "\n    ".join(diff))
    if problems:
        raise CrossvalError(
            f"{out_dir} holds folds run with other settings than this "
            "command's; their results would be averaged under this command:"
            "\n  "
            + "\n  ".join(problems)
            + "\nRerun with the settings those folds were run with (see "
            "their crossval_fold.json), or use a new --output_folder."
        )


def run_crossval(argv, runner=None, log=None, progress=True):
    """Run the cross-validation of a command line and write the reports
    (:class:`CrossvalError`, :class:`FoldFailedError`,
    :class:`FoldInterrupted`).

    Arguments
    ---------
    argv : list of str
        The arguments of ``python -m sb_urbansound.training.crossval``.
    runner : callable, optional
        ``runner(recipe_argv, fold_dir)`` runs one fold, writing
        :data:`FOLD_OUTPUTS` (default: :func:`subprocess_runner`).
    log : callable, optional
        Where the one-line messages go (default: ``tqdm.write``).
    progress : bool
        Whether to show the progress bar over folds.

    Returns
    -------
    dict
        The contents of ``crossval_results.json``.
    """
    from sb_urbansound.training import report
    from tqdm.auto import tqdm

    runner = runner or subprocess_runner
    log = log or tqdm.write
    args = parse_crossval_args(argv)
    settings = read_recipe_settings(args.hparams_file, args.passthrough)
    leaky = args.leaky or settings["leaky_random_split"]
    if leaky and LEAKY_KEY not in settings["keys"]:
        raise CrossvalError(
            f"{args.hparams_file} has no {LEAKY_KEY} key, so this recipe "
            "cannot run the leaky random split"
        )
    plans = assign_folds(
        settings["folds"] if args.folds is None else args.folds
    )
    out_dir = args.output_folder or settings["output_folder"]
    if not out_dir:
        raise CrossvalError("no output folder: pass --output_folder=DIR")
    out_dir = claim_folder(Path(out_dir), CROSSVAL_KIND)
    with FolderLock(out_dir, "running a cross-validation in"):
        if leaky:
            log(
                "WARNING: --leaky-random-split: clips are shuffled across "
                "folds, so clips of one recording (or speaker) land in both "
                "train and test; accuracy will be inflated and is NOT "
                "comparable to results on the data's own folds (for "
                "UrbanSound8K: to published results)."
            )
        log(
            f"cross-validation over folds {[p.test for p in plans]} "
            f"(valid fold = next listed fold, cyclically) in {out_dir}"
        )
        passthrough = list(args.passthrough)
        if BANK_KEY in settings["keys"] and not any(
            a.lstrip("-").startswith(BANK_KEY) for a in passthrough
        ):
            passthrough.append(f"--{BANK_KEY}={out_dir / 'bank'}")
        argvs = {
            p.test: _fold_argv(
                args.hparams_file, p, out_dir / p.name, passthrough, leaky
            )
            for p in plans
        }
        wanted = {
            t: _fold_settings(args.hparams_file, a) for t, a in argvs.items()
        }
        _refuse_other_settings(plans, out_dir, wanted)

        fold_results, histories, seconds, commands = [], {}, {}, {}
        with tqdm(
            total=len(plans), desc="crossval", unit="fold", disable=not progress
        ) as bar:
            for plan in plans:
                fold_dir, t = out_dir / plan.name, plan.test
                res, marker = _run_fold(
                    plan, fold_dir, argvs[t], wanted[t], leaky, runner, log, bar
                )
                seconds[t] = (marker or {}).get("seconds")
                if fold_argv := (marker or {}).get("recipe_argv"):
                    script = str(recipe_script(fold_argv[0]))
                    commands[t] = shlex.join(["python", script, *fold_argv])
                fold_results.append(
                    {"test_fold": t, "valid_folds": [plan.valid], **res}
                )
                history_path = fold_dir / "history.json"
                if history_path.exists():
                    histories[t] = _read_json(history_path)
                else:
                    log(f"warning: no {history_path}; fold {t} has no curves")
                bar.update(1)

        repeated = _test_set_overlap(
            args.hparams_file, args.passthrough, plans, out_dir
        )
        if repeated:
            log(
                f"WARNING: {len(repeated)} clip(s) are in the test set of more "
                f"than one fold (e.g. {repeated[:3]}): the folds do not "
                "partition the data, so the summed confusion matrix counts "
                "them more than once"
            )
        results = report.aggregate_folds(fold_results)
        atomic_write_json(out_dir / "crossval_results.json", results)
        have_seconds = all(seconds.get(p.test) is not None for p in plans)
        report.write_markdown_report(
            out_dir / "crossval_report.md",
            results,
            command="python -m sb_urbansound.training.crossval "
            + shlex.join(args.argv),
            hardware=hardware_description(),
            leaky=leaky,
            fold_seconds=seconds if have_seconds else None,
            fold_commands=commands,
        )
        report.plot_confusion_matrix(
            out_dir / "confusion_matrix.png",
            results["confusion_matrix"],
            results["labels"],
        )
        report.plot_learning_curves(out_dir / "learning_curves.png", histories)
        std = results["std"]
        spread = " % (single fold)" if std is None else f" ± {100 * std:.2f} %"
        log(
            f"cross-validation accuracy: {100 * results['mean']:.2f}{spread}"
            + f" over {len(plans)} folds"
            + (" (LEAKY RANDOM SPLIT, not comparable)" if leaky else "")
            + f"; report: {out_dir / 'crossval_report.md'}"
        )
        return results


def _run_fold(plan, fold_dir, recipe_argv, wanted, leaky, runner, log, bar):
    """Run one fold (unless finished); return its results and marker."""
    from sb_urbansound.training import report

    marker_path = fold_dir / FOLD_MARKER
    results_path = fold_dir / "test_results.json"
    marker = _read_json(marker_path) if marker_path.exists() else None
    if marker is not None:
        diff = "; ".join(
            f"{k}: was {marker.get(k)!r}, now {v!r}"
            for k, v in plan.record(leaky).items()
            if marker.get(k) != v
        )
        if diff and _started(fold_dir):
            raise CrossvalError(
                f"{fold_dir} was run with a different fold assignment "
                f"({diff}). Use a new --output_folder, or delete {fold_dir} "
                "to rerun that fold."
            )
        if diff:  # an earlier attempt stopped before any checkpoint
            marker = None
    elif results_path.exists():
        log(
            f"warning: {fold_dir} has results but no {FOLD_MARKER}; "
            "assuming it was run with this assignment"
        )
    if fold_finished(fold_dir):
        res = _read_json(results_path)
        log(
            f"fold {plan.test}: already finished "
            f"(accuracy {100 * res['accuracy']:.2f} %), skipped"
        )
        return res, marker
    marker = marker or {**plan.record(leaky), "seconds": 0.0, "attempts": 0}
    if results_path.exists():
        log(
            f"fold {plan.test}: has test results but no exported "
            f"model ({fold_dir / FOLD_OUTPUTS[1]}): the run "
            "stopped during the export; rerunning it (it trains "
            "nothing more, tests and exports again)"
        )
    elif marker["attempts"]:
        log(f"fold {plan.test}: resuming the unfinished run")
    marker["attempts"] += 1
    marker["recipe_argv"] = recipe_argv
    marker["settings"] = wanted
    claim_folder(fold_dir, "run")
    atomic_write_json(marker_path, marker)
    bar.set_postfix_str(f"fold {plan.test}")
    start = time.monotonic()
    try:
        runner(recipe_argv, fold_dir)
    finally:
        marker["seconds"] += time.monotonic() - start
        atomic_write_json(marker_path, marker)
    missing = [
        str(fold_dir / n) for n in FOLD_OUTPUTS if not (fold_dir / n).is_file()
    ]
    if missing:
        raise FoldFailedError(
            f"the recipe finished fold {plan.test} without writing "
            f"{' and '.join(missing)}"
        )
    res = _read_json(results_path)
    log(
        f"fold {plan.test}: accuracy {100 * res['accuracy']:.2f} % on "
        f"{res['n_clips']} clips (valid fold {plan.valid}), "
        f"{report.format_duration(marker['seconds'])}"
    )
    return res, marker


def main(argv=None):
    """Command-line entry point: ``python -m sb_urbansound.training.crossval``.

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0, 2 (bad arguments), 1 (a fold failed) or 128 + a stop signal.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run_crossval(argv)
    except UserError as e:  # CrossvalError and the folder's lock or marker
        print(f"crossval: error: {e}", file=sys.stderr)
        return e.exit_status
    except FoldFailedError as e:
        print(f"crossval: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        why = f" ({e})" if str(e) else ""
        print(
            f"\ncrossval: interrupted{why}; rerun the same command to resume "
            "(finished folds are skipped).",
            file=sys.stderr,
        )
        return 128 + int(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
