"""What every module shares: the base LightningModule, model loading, losses, evaluation, checkpoints."""
