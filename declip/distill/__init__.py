"""Layer 3: region sampling, losses, the teacher cache, the trainer and the variants."""
