"""Every `snakemake` command the README shows works as users type it (dry run, in a fresh clone).

Commands are read from the README itself (code blocks and inline code), so commands other parts add
are covered automatically. `--report` needs a finished run and is only parsed; `...` marks a template.
"""

import re
import shlex
from pathlib import Path

import pytest
from workflow_clone import ROOT, fresh_clone, run_snakemake

pytestmark = pytest.mark.slow


def readme_commands(text: str) -> list[str]:
    """Every `snakemake ...` command in the README's code blocks and inline code spans."""
    candidates = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        candidates += joined.splitlines()
    text_outside = re.sub(r"```.*?```", "", text, flags=re.S)
    candidates += re.findall(r"`([^`\n]+)`", text_outside)
    commands = []
    for line in candidates:
        for part in line.split("&&"):
            part = part.split(" #")[0].strip()
            if part.startswith("snakemake") and (part == "snakemake" or part.startswith("snakemake ")):
                if "..." not in part and part not in commands and not re.search(r"[A-Z]{3,}", part):
                    commands.append(part)
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_readme_shows_the_main_commands():
    assert {"snakemake results/table2.csv", "snakemake ablations"} <= set(COMMANDS), COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_targets_come_before_configfile(command):
    """`--configfile` takes every following word: a target after it would be read as a config file."""
    words = shlex.split(command)[1:]
    if "--configfile" in words:
        after = words[words.index("--configfile") + 1:]
        files = [w for w in after if not w.startswith("-")][: len(after)]
        assert all(w.endswith((".yaml", ".yml", ".json")) for w in files), f"{command}: a target follows --configfile"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    return fresh_clone(tmp_path_factory.mktemp("readme") / "declip-repro")


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_dry_runs(command, clone):
    args = shlex.split(command)[1:]
    if "--report" in args:
        pytest.skip("`--report` needs a finished run; its reporting is tested in test_workflow")
    # As typed (no --cores: the default profile supplies it), plus -n; a SLURM profile needs sbatch only
    # when jobs are submitted, so its dry run works anywhere.
    r = run_snakemake(clone, *args, "-n", timeout=300)
    out = r.stdout + r.stderr
    assert "This was a dry-run" in out or "Nothing to be done" in out, out[-2000:]
    targets = [a for a in args if not a.startswith("-") and not a.endswith((".yaml", ".yml")) and a not in ("slurm", "all")]
    for target in targets:
        name = Path(target).stem if "/" in target else target
        assert name in out, f"{command}: the dry run does not build {target}:\n{out[-2000:]}"
