"""A trained model in use: its folder, CLI, export, runtime."""
