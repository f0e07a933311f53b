"""Fine-tuning from pretrained encoders: BEATs, a strict weight transfer, and
the YAML's fine-tuning options for the recipe.

Authors
-------
 * sb-urbansound contributors
"""

import os
import threading
from collections.abc import Mapping

import torch
from sb_urbansound.errors import UserError

from speechbrain.utils.checkpoints import torch_patched_state_dict_load
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.fetching import FetchConfig
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

#: Keys listed per kind in a transfer error (the rest are counted).
MAX_LISTED_KEYS = 12


class PassThrough(torch.nn.Module):
    """Returns its input: a no-op ``compute_features`` or ``mean_var_norm``.

    Example
    -------
    >>> x = torch.randn(2, 8)
    >>> PassThrough()(x, torch.ones(2)) is x
    True
    """

    def forward(self, x, lengths=None):
        """Return ``x`` itself."""
        return x


def check_finetune_options(values, hparams_file="the YAML", run_opts=None):
    """Check the fine-tuning options of a YAML before anything is built.

    Arguments
    ---------
    values : dict
        The YAML's top-level keys and values.
    hparams_file : str or Path
        Named in the message.
    run_opts : dict, optional
        SpeechBrain's run options.

    Raises
    ------
    UserError
        Naming the option, its value and what a valid value is.

    Example
    -------
    >>> check_finetune_options({"encoder_lr_scale": 0.1})
    >>> check_finetune_options({"unfreeze_after_epochs": -1})
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: unfreeze_after_epochs=-1 is not valid: ...
    """

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    checks = {
        "freeze_encoder": (lambda v: isinstance(v, bool), "True or False"),
        "use_pretrained": (lambda v: isinstance(v, bool), "True or False"),
        "unfreeze_after_epochs": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "a whole number of epochs >= 0",
        ),
        "encoder_lr_scale": (
            lambda v: v is None or (number(v) and v > 0),
            "null (one learning rate) or a number > 0, e.g. 0.1",
        ),
    }
    for key, (check, allowed) in checks.items():
        if key in values and not check(values[key]):
            raise UserError(
                f"{key}={values[key]!r} is not valid: {key} must be {allowed} "
                f"(from {hparams_file} or --{key}=...)"
            )
    if values.get("freeze_encoder") and values.get("unfreeze_after_epochs"):
        raise UserError(
            "freeze_encoder=True freezes the encoder for the whole run, "
            "unfreeze_after_epochs unfreezes it: set only one of them"
        )
    run_opts = run_opts or {}
    after = values.get("unfreeze_after_epochs")
    torchrun = os.environ.get("RANK") is not None
    if after and torchrun and not run_opts.get("find_unused_parameters"):
        raise UserError(
            "unfreeze_after_epochs with several processes needs "
            "--find_unused_parameters (the frozen encoder gets no "
            "gradients in the first epochs)"
        )
    epochs = values.get("number_of_epochs")
    if after and number(epochs) and after >= epochs:
        logger.warning(
            "unfreeze_after_epochs=%s and number_of_epochs=%s: the encoder "
            "stays frozen for the whole run (to fine-tune it, set "
            "--unfreeze_after_epochs below the number of epochs)",
            after,
            epochs,
        )
    scaled = values.get("encoder_lr_scale") is not None
    if scaled and run_opts.get("remove_vector_weight_decay"):
        raise UserError(
            "encoder_lr_scale makes its own parameter groups; it "
            "cannot be combined with --remove_vector_weight_decay"
        )


def set_trainable(module, trainable):
    """Freezes or unfreezes the parameters of a module.

    Arguments
    ---------
    module : torch.nn.Module
        The module.
    trainable : bool
        Whether its parameters get gradients.

    Example
    -------
    >>> layer = torch.nn.Linear(2, 2)
    >>> set_trainable(layer, False)
    >>> layer.weight.requires_grad
    False
    """
    for param in module.parameters():
        param.requires_grad_(trainable)


def encoder_optimizer(opt_class, modules, scale):
    """An optimizer whose second group, the encoder, has ``scale`` times the
    learning rate of the first (the other modules).

    Arguments
    ---------
    opt_class : callable
        The YAML's ``opt_class`` (parameter groups to an optimizer).
    modules : torch.nn.ModuleDict
        A Brain's modules, with ``embedding_model``.
    scale : float
        ``encoder_lr_scale``.

    Returns
    -------
    torch.optim.Optimizer

    Example
    -------
    >>> enc, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    >>> modules = torch.nn.ModuleDict({"embedding_model": enc, "head": head})
    >>> sgd = lambda groups: torch.optim.SGD(groups, lr=1.0)
    >>> opt = encoder_optimizer(sgd, modules, 0.1)
    >>> [g["lr"] for g in opt.param_groups]
    [1.0, 0.1]
    """
    encoder = list(modules.embedding_model.parameters())
    in_encoder = {id(p) for p in encoder}
    others = [p for p in modules.parameters() if id(p) not in in_encoder]
    optimizer = opt_class([{"params": others}, {"params": encoder}])
    optimizer.param_groups[1]["lr"] *= scale
    return optimizer


def load_pretrained_encoder(hparams):
    """Loads the pretrained encoder weights of the YAML's ``pretrainer``, on
    a fresh run only (a resumed run's checkpoint holds the fine-tuned ones).

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.
    """
    if hparams["checkpointer"].find_checkpoint() is not None:
        logger.info("Resuming: the checkpoint replaces the pretrained encoder")
        return
    source = hparams.get("pretrained_encoder")
    if not source:
        what = getattr(
            hparams.get("embedding_model"), "PRETRAINED_HINT", "checkpoint file"
        )
        raise UserError(
            "use_pretrained is True but no pretrained_encoder is given: pass "
            f"--pretrained_encoder=<{what}> (see the recipe README), "
            "or --use_pretrained=False to train the encoder from random "
            "weights"
        )
    source = str(source)
    if not os.path.exists(source) and source.startswith(("/", ".", "~")):
        raise UserError(f"pretrained_encoder: {source} does not exist")
    pretrainer = hparams["pretrainer"]
    if pretrainer.collect_in is not None and if_main_process():
        os.makedirs(pretrainer.collect_in, exist_ok=True)
    try:
        # overwrite: replace the link an earlier start may have left
        run_on_main(
            pretrainer.collect_files,
            kwargs={"fetch_config": FetchConfig(overwrite=True)},
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot fetch pretrained_encoder={source}: it is not a local "
            "file, and fetching it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Without internet, download it "
            "elsewhere and pass the local file."
        ) from None
    pretrainer.load_collected()
    logger.info("Pretrained encoder loaded from %s", source)


#: BEATsConfig keys that change the parameters or the inference: a
#: checkpoint must match them (dropouts and the like may differ).
BEATS_ARCHITECTURE_KEYS = tuple(
    "input_patch_size embed_dim conv_bias encoder_layers encoder_embed_dim "
    "encoder_ffn_embed_dim encoder_attention_heads activation_fn "
    "layer_norm_first deep_norm conv_pos conv_pos_groups "
    "relative_position_embedding num_buckets max_distance gru_rel_pos "
    "finetuned_model predictor_class".split()
)
#: Mel bands of BEATs' own filter bank (fixed in SpeechBrain's lobe).
BEATS_MEL_BINS = 128
#: Sample rate BEATs' filter bank assumes (fixed in SpeechBrain's lobe).
BEATS_SAMPLE_RATE = 16000
_BEATS_BUILD = threading.Lock()


def build_beats(config=None):
    """SpeechBrain's BEATs lobe with the given configuration, random weights.

    SpeechBrain's ``BEATs`` reads its configuration only from a checkpoint,
    so its ``BEATsConfig`` is patched while the model is built.

    Arguments
    ---------
    config : dict, optional
        ``BEATsConfig`` values (missing keys: the lobe's defaults).

    Returns
    -------
    speechbrain.lobes.models.beats.BEATs
        Not frozen.

    Example
    -------
    >>> cfg = dict(encoder_layers=1, embed_dim=32, encoder_embed_dim=32)
    >>> cfg.update(encoder_ffn_embed_dim=64, encoder_attention_heads=2)
    >>> model = build_beats(cfg)
    >>> model.cfg.encoder_layers, len(model.encoder.layers)
    (1, 1)
    """
    from speechbrain.lobes.models import beats

    config = dict(config or {})
    default_config = beats.BEATsConfig

    def configured(cfg=None):
        made = default_config(cfg)
        made.update(config)
        return made

    with _BEATS_BUILD:
        beats.BEATsConfig = configured
        try:
            return beats.BEATs(ckp_path=None, freeze=False)
        finally:
            beats.BEATsConfig = default_config


class BEATsEncoder(torch.nn.Module):
    """BEATs as the recipe's embedding model: waveforms in, one vector out.
    Its architecture comes from the YAML, so a trained model folder loads
    without the checkpoint it was fine-tuned from.

    Arguments
    ---------
    config : dict, optional
        ``BEATsConfig`` values (missing keys: the lobe's defaults).
    sample_rate : int
        Must be 16000 (BEATs' filter bank assumes it).

    Example
    -------
    >>> cfg = dict(encoder_layers=1, embed_dim=32, encoder_embed_dim=32)
    >>> cfg.update(encoder_ffn_embed_dim=64, encoder_attention_heads=2)
    >>> enc = BEATsEncoder(cfg)
    >>> enc(torch.randn(2, 8000), torch.ones(2)).shape
    torch.Size([2, 1, 32])
    """

    def __init__(self, config=None, sample_rate=BEATS_SAMPLE_RATE):
        super().__init__()
        if sample_rate != BEATS_SAMPLE_RATE:
            raise UserError(
                f"BEATs takes {BEATS_SAMPLE_RATE} Hz audio (its filter bank "
                f"assumes it), but sample_rate is {sample_rate}: set "
                f"--sample_rate={BEATS_SAMPLE_RATE}"
            )
        self.beats = build_beats(config)

    def forward(self, wavs, lengths=None):
        """``[batch, time]`` 16 kHz waveforms and their relative lengths
        (default all 1) → ``[batch, 1, encoder_embed_dim]``."""
        if wavs.dim() != 2:
            raise UserError(
                "BEATs takes mono waveforms [batch, time], got a tensor of "
                f"shape {tuple(wavs.shape)}: set --channels=1 and use a "
                "pass-through compute_features"
            )
        patch = self.beats.input_patch_size
        min_samples = 400 + 160 * (patch - 1)  # 25 ms frames, 10 ms hop
        if wavs.shape[1] < min_samples:
            raise UserError(
                f"clips of {wavs.shape[1]} samples are too short for BEATs: "
                f"its {patch}-frame patches need at least {min_samples} "
                f"samples ({1000 * min_samples / BEATS_SAMPLE_RATE:.0f} ms "
                "at 16 kHz); raise duration_ms"
            )
        if lengths is None:
            lengths = torch.ones(wavs.shape[0], device=wavs.device)
        tokens = self.beats(wavs, lengths)[0]  # [batch, n_time * n_freq, dim]
        # Tokens run through time first, then the frequency patches of each
        # time step: keep the time steps inside each clip's length.
        n_freq = BEATS_MEL_BINS // patch
        n_time = tokens.shape[1] // n_freq
        kept = torch.ceil(lengths * n_time).clamp(min=1).unsqueeze(1)
        steps = torch.arange(n_time, device=tokens.device).unsqueeze(0)
        mask = (steps < kept).repeat_interleave(n_freq, dim=1).unsqueeze(-1)
        mask = mask.to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1)
        return pooled.unsqueeze(1)

    def convert_pretrained(self, checkpoint, path):
        """This module's state dict from a BEATs checkpoint: the authors'
        ``{"cfg": ..., "model": ...}``, the lobe's, or this module's own.

        Arguments
        ---------
        checkpoint : dict
            What the checkpoint file holds.
        path : str
            The file, for messages.

        Returns
        -------
        dict
            A state dict for this module (checked by the caller).

        Raises
        ------
        UserError
            When the checkpoint's configuration differs from this module's.
        """
        if not isinstance(checkpoint, Mapping):
            return checkpoint
        if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
            cfg = checkpoint.get("cfg") or {}
            ours = vars(self.beats.cfg)
            differ = [
                f"{key}: checkpoint {cfg[key]!r}, model {ours.get(key)!r}"
                for key in BEATS_ARCHITECTURE_KEYS
                if key in cfg and cfg[key] != ours.get(key)
            ]
            if differ:
                raise UserError(
                    f"the BEATs checkpoint {_describe(path)} has another "
                    "architecture than the model built from the YAML's "
                    "BEATs configuration:\n  "
                    + "\n  ".join(differ)
                    + "\nSet these values in the YAML (the config of "
                    "embedding_model) to those of the checkpoint."
                )
            checkpoint = checkpoint["model"]
        if any(str(key).startswith("beats.") for key in checkpoint):
            return checkpoint
        return {f"beats.{key}": value for key, value in checkpoint.items()}


def _describe(path):
    """``path``, and the file it links to when it is a link."""
    real = os.path.realpath(path)
    return str(path) if real == os.path.abspath(path) else f"{path} (-> {real})"


def _listed(keys):
    """The first keys of a list, and how many more there are."""
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def _prefix_hint(missing, unexpected):
    """A hint when the keys differ only by a prefix (a wrapped module)."""
    if not missing or not unexpected:
        return ""
    wanted, found = missing[0], set(unexpected)
    for key in unexpected:
        if key.endswith("." + wanted):
            prefix = key[: -len(wanted)]
            if all(prefix + k in found for k in missing):
                return (
                    f"\nThe file's keys carry the prefix {prefix!r}, the "
                    "model's do not: it was saved from a module that wraps "
                    "this one."
                )
        if wanted.endswith("." + key):
            prefix = wanted[: -len(key)]
            if all(k.startswith(prefix) for k in missing):
                return (
                    f"\nThe model's keys carry the prefix {prefix!r}, the "
                    "file's do not: the file holds the module that this one "
                    "wraps; load it into that module."
                )
    return ""


def check_state_dict(module, state_dict, path):
    """Check that a state dict fits a module exactly: same keys, same shapes.

    Arguments
    ---------
    module : torch.nn.Module
        The module to load into.
    state_dict : dict
        The parameters and buffers to load.
    path : str
        The file they come from, for the message.

    Raises
    ------
    UserError
        Naming the file and the missing, unexpected and mismatched keys.

    Example
    -------
    >>> state = {"weight": torch.ones(3, 2), "scale": torch.ones(1)}
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     check_state_dict(torch.nn.Linear(2, 3), state, "x.ckpt")
    ... except UserError as e:
    ...     print(str(e).splitlines()[1:3])
    ['  missing keys (in the model, not in the file): 1: bias',
    '  unexpected keys (in the file, not in the model): 1: scale']
    """
    if not isinstance(state_dict, Mapping):
        raise UserError(
            f"the pretrained checkpoint {_describe(path)} holds a "
            f"{type(state_dict).__name__}, not a state dict (parameter names "
            "and tensors)"
        )
    expected = module.state_dict()
    # BatchNorm adds num_batches_tracked itself to checkpoints saved without it
    missing = [
        key
        for key in expected
        if key not in state_dict and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (file {tuple(value.shape)}, model {tuple(expected[key].shape)})"
        for key, value in state_dict.items()
        if key in expected
        and hasattr(value, "shape")
        and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [
        f"the pretrained checkpoint {_describe(path)} does not fit "
        f"{type(module).__name__} ({len(expected)} keys; the file has "
        f"{len(state_dict)}):"
    ]
    kinds = {
        "missing keys (in the model, not in the file)": missing,
        "unexpected keys (in the file, not in the model)": unexpected,
        "shape mismatches": mismatched,
    }
    lines += [f"  {k}: {len(v)}: {_listed(v)}" for k, v in kinds.items() if v]
    raise UserError(
        "\n".join(lines)
        + _prefix_hint(missing, unexpected)
        + "\nUse a checkpoint of the same architecture, or change the "
        "model's configuration in the YAML to match it."
    )


# Ours, not SpeechBrain's torch_parameter_transfer: that only logs a warning
# per missing or unexpected key, so a checkpoint of another module "loads".
def strict_parameter_transfer(obj, path):
    """Load pretrained parameters into a module; any misfit is an error.

    A ``Pretrainer`` hook. A module's ``read_pretrained(path)`` may read
    foreign files (YAMNet's) and its ``convert_pretrained(checkpoint, path)``
    convert other formats (BEATs'); nothing is loaded unless every key and
    shape fits.

    Arguments
    ---------
    obj : torch.nn.Module
        The module to load into.
    path : str or Path
        The checkpoint file.

    Raises
    ------
    UserError
        When the file cannot be read or does not fit the module.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> torch.save(torch.nn.Linear(2, 3).state_dict(), tmp / "a.ckpt")
    >>> strict_parameter_transfer(torch.nn.Linear(2, 3), tmp / "a.ckpt")
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     strict_parameter_transfer(torch.nn.Linear(2, 4), tmp / "a.ckpt")
    ... except UserError as e:
    ...     print(str(e).splitlines()[1])
      shape mismatches: 2: weight (file (3, 2), model (4, 2)),
      bias (file (3,), model (4,))
    """
    read = getattr(obj, "read_pretrained", None)
    checkpoint = read(path) if read is not None else None
    if checkpoint is None:
        try:
            checkpoint = torch_patched_state_dict_load(path, "cpu")
        except Exception as e:
            raise UserError(
                f"cannot read the pretrained checkpoint {_describe(path)}: "
                f"{type(e).__name__}: {e}"
            ) from None
    convert = getattr(obj, "convert_pretrained", None)
    if convert is not None:
        checkpoint = convert(checkpoint, str(path))
    check_state_dict(obj, checkpoint, path)
    result = obj.load_state_dict(checkpoint, strict=False)
    left = [
        key
        for key in [*result.missing_keys, *result.unexpected_keys]
        if not key.endswith("num_batches_tracked")
    ]
    if left:  # checked above; a module with its own loading rules may differ
        raise UserError(
            f"the pretrained checkpoint {_describe(path)} did not load "
            f"these keys: {_listed(left)}"
        )
