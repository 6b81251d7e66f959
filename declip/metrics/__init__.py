"""Layer 4: scorers with the official benchmarks' semantics, usable on official file formats."""
