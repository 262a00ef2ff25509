"""ml_collections config files: ``get_config()`` returning a ConfigDict, no logic."""
