"""Data sources: labelled audio to SpeechBrain manifests.

* :mod:`sb_urbansound.data.sources.urbansound8k`: UrbanSound8K's metadata CSV and
  its official folds (the recipe's ``urbansound8k_prepare.py`` writes its
  manifests);
* :mod:`sb_urbansound.data.sources.files`: class folders and file-name patterns,
  for your own sounds;
* :mod:`sb_urbansound.data.sources.folds`: fold lists and group-aware folds.
"""

from sb_urbansound.data.sources.files import prepare_filenames, prepare_folders
