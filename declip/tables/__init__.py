"""Layer 5: the registry of the paper's tables and their rendering from metrics files."""
