"""`import declip` (and what the Snakefile imports) must not pull heavy libraries."""

import subprocess
import sys

HEAVY = ["torch", "open_clip", "transformers", "diffusers", "mlflow", "timm"]


def _loaded_after(stmt):
    code = f"import sys; {stmt}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_declip_is_light():
    assert _loaded_after("import declip") == []


def test_snakefile_imports_are_light():
    assert _loaded_after("import declip.config, declip.tables.registry, declip.data.vocab") == []


def test_cli_parser_is_light():
    assert _loaded_after("from declip.cli import build_parser; build_parser()") == []
