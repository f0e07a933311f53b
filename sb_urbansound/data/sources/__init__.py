"""Data sources: labelled audio to SpeechBrain manifests (UrbanSound8K's
metadata and folds, class folders, file-name patterns, fold lists)."""

from sb_urbansound.data.sources.files import prepare_filenames, prepare_folders
