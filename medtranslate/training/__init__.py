"""The training loop: schedule, validation, checkpoints, resume."""
