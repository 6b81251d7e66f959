"""Layer 4: one module per task family, each consuming the dense map the way its host does."""

from __future__ import annotations

import json
from pathlib import Path


def write_metrics(path, payload: dict) -> Path:
    """Write a family's metrics.json (docs/interfaces.md), creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path
