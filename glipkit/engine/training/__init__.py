"""train-student: the training loop, its config, data, checkpoints, EMA, optimiser and tuning modes."""
