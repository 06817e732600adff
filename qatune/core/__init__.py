"""Task- and backend-neutral building blocks: registries, atomic JSON files, window batching, RNG state."""
