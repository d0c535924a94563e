"""Training stage: builders from a Config, checkpoints, and the one trainer loop for all methods."""
