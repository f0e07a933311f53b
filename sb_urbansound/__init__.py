"""sb-urbansound: a SpeechBrain plugin for sound classification.

The recipe (``recipes/UrbanSound8k/SoundClassification``: ``train.py``
and ``hparams/*.yaml``) imports its modules, laid out by stage:

* :mod:`sb_urbansound.data`: labelled audio to the clips, banks and shards a
  run reads (sources, manifests, download, audio, bank, shards, loader);
* :mod:`sb_urbansound.training`: features, models and runs, up to
  cross-validation (features, augment, models, yamnet, finetune, checkpoints,
  experiment, distributed, hardware, processes, crossval, report);
* :mod:`sb_urbansound.serving`: a trained model in use: its folder, CLI,
  export, runtime (inference, trust, timeline, runtime, export, stream, card,
  classify);
* :mod:`sb_urbansound.atomic`: stores: how every folder that sb-urbansound
  writes is written;
* :mod:`sb_urbansound.errors`: the errors that name a user's file, row or
  option and say what to do;
* :mod:`sb_urbansound.yaml_reader`: the one reader of HyperPyYAML files as
  data: nothing built, nothing run.

Each stage's ``__init__`` lists its modules, and README.md's layout all of them.
"""

__version__ = "0.2.0"
