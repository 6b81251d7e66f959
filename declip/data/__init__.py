"""Layer 1: dataset readers in official formats and the synthetic mini-world generators."""
