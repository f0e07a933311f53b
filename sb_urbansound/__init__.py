"""sb-urbansound: a SpeechBrain plugin for sound classification.

The recipe (``recipes/UrbanSound8k/SoundClassification``: ``train.py`` and
``hparams/*.yaml``) imports these modules:

* :mod:`sb_urbansound.sources`: labelled audio (UrbanSound8K's CSV, class
  folders, file names) and folds; :mod:`sb_urbansound.manifests` writes the
  SpeechBrain manifests, checking every file once.
* :mod:`sb_urbansound.audio`: finding and reading audio, and the
  clip-conditioning object shared by training and inference.
* :mod:`sb_urbansound.features`, :mod:`sb_urbansound.augment`: batched mel
  spectrogram in dB, normalisers, SpecAugment with mean fill.
* :mod:`sb_urbansound.models`: the tutorial's CNN as embedding + classifier.
* :mod:`sb_urbansound.checkpoints`, :mod:`sb_urbansound.experiment`: robust
  checkpoints, option checks and output-folder bookkeeping.
* :mod:`sb_urbansound.yaml_reader`: the one reader of HyperPyYAML files as
  data (nothing built), for the option checks and the model folder checks.
* :mod:`sb_urbansound.inference`, :mod:`sb_urbansound.classify`: the exported
  model folder and the ``classify`` command; :mod:`sb_urbansound.card`, its
  model card.
* :mod:`sb_urbansound.export`: ONNX and TorchScript, checked against PyTorch;
  :mod:`sb_urbansound.runtime`: classifying with ``model.onnx`` without torch;
  :mod:`sb_urbansound.stream`, :mod:`sb_urbansound.timeline`: live streams,
  windows and event timelines (torch-free, shared by both backends).
* :mod:`sb_urbansound.crossval`, :mod:`sb_urbansound.report`: the fold
  protocol as one command, and its reports.
"""

__version__ = "0.2.0"
