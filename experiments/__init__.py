"""What users run: flags, configs, the training loop, logging, checkpoints and figures."""
