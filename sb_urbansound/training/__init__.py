"""Features, models and runs, up to cross-validation."""
