"""Labelled audio to the clips, banks and shards a run reads."""
