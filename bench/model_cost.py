#!/usr/bin/env python3
"""Parameters and multiply-accumulates per clip of a recipe YAML's model.

Builds the YAML's modules (nothing is trained or read), runs one silent clip
of the training length through ``compute_features`` → ``mean_var_norm`` →
``embedding_model`` → ``classifier`` and counts the multiply-accumulates of
every convolution and linear layer (the rest is small beside them):

    python bench/model_cost.py hparams/cnn_large.yaml --n_classes=10
    python bench/model_cost.py hparams/fsdd.yaml --n_classes=10 --json out.json

Overrides work as for ``train.py``. ``n_classes: 0`` is set to 10 unless given.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "UrbanSound8k" / "SoundClassification"


def count_macs(module, *inputs):
    """Multiply-accumulates of the conv and linear layers in one forward."""
    total = [0]

    def hook(layer, args, output):
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)):
            k = 1
            for size in layer.kernel_size:
                k *= size
            per_output = layer.in_channels // layer.groups * k
            total[0] += output.numel() // output.shape[0] * per_output
        elif isinstance(layer, torch.nn.Linear):
            total[0] += output.numel() // output.shape[0] * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0], out


def model_cost(hparams_file, overrides=()):
    """``{"parameters", "trainable", "macs_per_clip"}`` of a YAML's model."""
    from hyperpyyaml import load_hyperpyyaml

    import speechbrain as sb

    sys.path.insert(0, str(RECIPE))
    args = list(overrides)
    if not any(a.startswith("--n_classes") for a in args):
        args.append("--n_classes=10")
    with tempfile.TemporaryDirectory() as tmp:
        args += [f"--data_folder={tmp}", f"--output_folder={tmp}/out"]
        _, _, yaml_overrides = sb.parse_arguments([str(hparams_file), *args])
        with open(hparams_file, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f, yaml_overrides)
    mods = hparams["modules"]
    for module in mods.values():
        module.eval()
    samples = round(hparams["sample_rate"] * hparams["duration_ms"] / 1000)
    shape = (1, samples) if hparams["channels"] == 1 else (1, samples, 2)
    feats = mods["compute_features"](torch.zeros(shape))
    lens = torch.ones(1)
    feats = mods["mean_var_norm"](feats, lens)
    macs_emb, emb = count_macs(mods["embedding_model"], feats, lens)
    macs_clf, _ = count_macs(mods["classifier"], emb)
    params = [
        p
        for name in ("embedding_model", "classifier")
        for p in mods[name].parameters()
    ]
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "macs_per_clip": macs_emb + macs_clf,
        "feature_shape": list(feats.shape[1:]),
    }


def main(argv=None):
    """Command line: print the cost of a YAML's model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hparams_file")
    parser.add_argument("--json", help="also write the numbers to this file")
    args, overrides = parser.parse_known_args(argv)
    cost = model_cost(args.hparams_file, overrides)
    print(
        f"{args.hparams_file}: {cost['parameters']:,} parameters, "
        f"{cost['macs_per_clip'] / 1e6:.1f} M multiply-accumulates per clip, "
        f"features {cost['feature_shape']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(cost, indent=2) + "\n")
    return cost


if __name__ == "__main__":
    main()
