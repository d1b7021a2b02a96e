"""Training: from a config to data, model and datasets (``pipeline``), the losses, the optimiser
and the PK training loop."""
