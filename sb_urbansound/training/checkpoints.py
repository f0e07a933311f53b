"""A SpeechBrain ``Checkpointer`` that survives broken checkpoints.

SpeechBrain's writes a checkpoint in place, so a stopped save leaves one that
does not load and stops every later run. Ours writes it in ``.saving`` and
renames it when complete, sets aside one that does not load and falls back
to the next best, and says when a save fails for lack of space.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import errno
import logging
import os
import shutil

import yaml
from sb_urbansound.errors import UserError

from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

BROKEN_PREFIX = ".broken-"  # a checkpoint that failed to load
STAGING = ".saving"  # where a checkpoint is written before its rename


class RobustCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer`` (same arguments) that falls back; it
    removes the leftovers of a stopped save or delete when created.

    Example
    -------
    >>> import torch
    >>> tmp = getfixture("tmp_path")
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpt = RobustCheckpointer(tmp, recoverables={"model": model})
    >>> first = ckpt.save_checkpoint(meta={"error": 0.5})
    >>> second = ckpt.save_checkpoint(meta={"error": 0.4})
    >>> _ = (second.path / "model.ckpt").write_bytes(b"truncated")
    >>> ckpt.recover_if_possible(min_key="error").meta["error"]
    0.5
    """

    def __init__(self, checkpoints_dir, *args, **kwargs):
        super().__init__(checkpoints_dir, *args, **kwargs)
        if if_main_process() and self.checkpoints_dir.is_dir():
            for leftover in self.checkpoints_dir.glob(CKPT_PREFIX + "*"):
                ours = leftover.is_dir() and not leftover.is_symlink()
                if ours and not (leftover / METAFNAME).exists():
                    shutil.rmtree(leftover, ignore_errors=True)
            staging = self.checkpoints_dir / STAGING
            if staging.is_dir() and not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)  # a stopped save

    def list_checkpoints(self):
        """List the checkpoints whose meta file can be read (never a link).

        Returns
        -------
        list
            ``Checkpoint`` namedtuples (path, meta, paramfiles).
        """
        checkpoints = []
        for path in sorted(self.checkpoints_dir.glob(CKPT_PREFIX + "*")):
            if path.is_symlink() or not path.is_dir():
                continue
            try:
                with open(path / METAFNAME, encoding="utf-8") as f:
                    meta = yaml.safe_load(f)
                paramfiles = {
                    p.stem: p
                    for p in path.iterdir()
                    if p.suffix == PARAMFILE_EXT
                }
            except FileNotFoundError:  # not one, or deleted meanwhile
                continue
            except (OSError, ValueError, yaml.YAMLError) as e:
                self._set_aside(path, f"its {METAFNAME} cannot be read ({e})")
                continue
            if isinstance(meta, dict):
                checkpoints.append(Checkpoint(path, meta, paramfiles))
            else:
                self._set_aside(path, f"its {METAFNAME} is not a mapping")
        return checkpoints

    def recover_if_possible(
        self,
        importance_key=None,
        max_key=None,
        min_key=None,
        ckpt_predicate=None,
    ):
        """Recover from the best checkpoint that loads (others set aside; a
        UserError when checkpoints exist but none of them loads).

        Arguments
        ---------
        importance_key : callable, optional
            How to rank the checkpoints, as in SpeechBrain's
            ``Checkpointer.recover_if_possible``.
        max_key : str, optional
            Load the checkpoint with the highest value of this meta key.
        min_key : str, optional
            Load the checkpoint with the lowest value of this meta key.
        ckpt_predicate : callable, optional
            Which checkpoints to consider (all by default).

        Returns
        -------
        Checkpoint or None
            The checkpoint loaded, or None.
        """
        candidates = self.find_checkpoints(
            importance_key, max_key, min_key, ckpt_predicate, None
        )
        failed = []
        for checkpoint in candidates:
            try:
                self.load_checkpoint(checkpoint)
            except Exception as e:  # torch.load's many ways to fail
                self._set_aside(checkpoint.path, f"it does not load ({e!r})")
                failed.append(str(checkpoint.path))
                continue
            if failed:
                logger.warning("Recovered from %s instead", checkpoint.path)
            return checkpoint
        if failed:
            raise UserError(
                f"none of the {len(failed)} checkpoint(s) in "
                f"{self.checkpoints_dir} loads (set aside as "
                f"{BROKEN_PREFIX}*): {', '.join(failed)}. Start again in a "
                "new output_folder, or delete the folder to start afresh."
            )
        logger.info("Would load a checkpoint here, but none found yet.")
        return None

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """Save a checkpoint; a full disk raises a UserError (the
        half-written checkpoint is removed).

        Arguments
        ---------
        meta : mapping
            Added to the checkpoint's meta file, as in SpeechBrain's
            ``Checkpointer.save_checkpoint``.
        end_of_epoch : bool
            Whether the checkpoint is at the end of an epoch.
        name : str, optional
            A custom name for the checkpoint (default: from the time and a
            random id).
        verbosity : int
            The logging level of the "Saved ..." message.

        Returns
        -------
        Checkpoint
            The saved checkpoint (None on processes other than the main one).
        """
        final = self.checkpoints_dir
        staging = final / STAGING
        if if_main_process():
            _remove_staging(staging)
            staging.mkdir(parents=True)
        try:
            # SpeechBrain names the folder and writes it (on every process,
            # for hooks that save on all of them); only then is it renamed
            self.checkpoints_dir = staging
            saved = super().save_checkpoint(
                meta, end_of_epoch, name, verbosity=logging.DEBUG
            )
        except (OSError, RuntimeError) as e:
            why = _write_failure(e, final)
            if why is None:
                raise
            if if_main_process():
                _remove_staging(staging)
            raise UserError(
                f"{why} while saving a checkpoint in {final} "
                f"({e}). Free some space (or point output_folder elsewhere) "
                "and run the same command again: it resumes from the last "
                "complete checkpoint."
            ) from e
        finally:
            self.checkpoints_dir = final
        if saved is not None:  # the main process
            target = _free_name(final, saved.path.name)
            os.replace(saved.path, target)
            _remove_staging(staging)
        # every process lists the same checkpoints (deletions are collective)
        ddp_barrier()
        if saved is None:
            return None
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {ckpt_type} checkpoint in {target}")
        paramfiles = {k: target / p.name for k, p in saved.paramfiles.items()}
        return saved._replace(path=target, paramfiles=paramfiles)

    def _set_aside(self, path, why):
        """Warn about a broken checkpoint and rename it out of the way."""
        target = path.with_name(BROKEN_PREFIX + path.name)
        logger.warning(
            "Checkpoint %s is broken: %s. Setting it aside as %s.",
            path,
            why,
            target.name,
        )
        if if_main_process():
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.replace(path, target)


def _remove_staging(staging):
    """Remove the staging folder (a link there is removed, not followed)."""
    if staging.is_symlink() or staging.is_file():
        staging.unlink()
    else:
        shutil.rmtree(staging, ignore_errors=True)


def _free_name(folder, name):
    """``folder / name``, or the next free number (``CKPT+<time>+01``): in
    the empty staging folder SpeechBrain cannot see the earlier ones.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> (tmp / "CKPT+t+00").mkdir()
    >>> _free_name(tmp, "CKPT+t+00").name, _free_name(tmp, "CKPT+u+00").name
    ('CKPT+t+01', 'CKPT+u+00')
    """
    stem, _, number = name.rpartition("+")
    if not (stem and number.isdigit()):
        stem, number = name, "-1"
    target, n = folder / name, int(number)
    while target.exists() or target.is_symlink():
        n += 1
        target = folder / f"{stem}+{n:02d}"
    return target


def _write_failure(error, folder):
    """Describe a save that failed for lack of space (None: another error)."""
    text = str(error).lower()
    no_space = (errno.ENOSPC, errno.EDQUOT)
    if getattr(error, "errno", None) in no_space or "no space left" in text:
        return "no space left on the device"
    # torch.save reports a failed write as a bare stream error, or as a
    # position check of its zip writer ("unexpected pos 576 vs 534")
    signs = ("iostream error", "file write failed", "unexpected pos")
    if any(sign in text for sign in signs):
        try:
            free = shutil.disk_usage(folder).free / 2**20
        except OSError:
            return "a write failed (no space left?)"
        return f"a write failed with {free:.0f} MB free (no space left?)"
    return None


def check_resumed_schedule(scheduler, steps_per_epoch, epochs, current):
    """Refuse to resume a schedule planned for other steps (the extra steps
    would train at its final rate, nearly zero); a finished run may be tested.

    Arguments
    ---------
    scheduler : object
        The recovered schedule (checked if it has ``total_steps``).
    steps_per_epoch : int
        Training batches per epoch now.
    epochs : int
        ``number_of_epochs`` now.
    current : int
        The epochs trained before this start.

    Example
    -------
    >>> from types import SimpleNamespace
    >>> check_resumed_schedule(SimpleNamespace(total_steps=20), 10, 2, 1)
    >>> check_resumed_schedule(SimpleNamespace(total_steps=20), 10, 3, 1)
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: this run's learning-rate schedule ...
    """
    total = getattr(scheduler, "total_steps", None)
    planned = steps_per_epoch * epochs
    if 0 < current < epochs and total is not None and total != planned:
        raise UserError(
            f"this run's learning-rate schedule was planned for {total} "
            f"steps ({total // steps_per_epoch} epochs of {steps_per_epoch} "
            f"batches); resuming it for {epochs} epochs ({planned} steps) "
            "would train at its final rate, nearly zero. Rerun with the "
            "original --number_of_epochs and batch size, or train the new "
            "schedule in a new --output_folder."
        )
