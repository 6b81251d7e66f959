"""Layer 4: one module per task family, each consuming the dense map the way its host does."""
