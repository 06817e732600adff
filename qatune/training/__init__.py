"""The shared training loop and its resumable checkpoints."""
