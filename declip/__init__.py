"""declip-repro: a workflow-managed reproducibility suite for DeCLIP.

Importing the package stays light (no torch, open_clip, transformers, diffusers or mlflow):
Snakemake re-parses the Snakefile, which imports `declip.config`, for every job.
"""

__version__ = "0.1.0"
