"""Training: losses, optimizers and schedules, LR range test, metrics, checkpoints and the Trainer."""
