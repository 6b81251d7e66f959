# MLflow: the database and the invocation's parent run are created once here, in the main process;
# each job's child run is recorded by `declip <verb> --job ...` (declip.tracking). Also the SLURM preflight.

import shutil


onstart:
    executor = getattr(workflow.executor_plugin, "name", "local")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise WorkflowError(
            "--profile slurm selects the SLURM executor, but `sbatch` is not on PATH. "
            "Run on a cluster login node (module load slurm), or drop --profile slurm to run locally."
        )
    from declip.tracking import start_invocation

    start_invocation(config, targets=[str(t) for t in workflow.dag.targetjobs] if hasattr(workflow, "dag") else [])


onsuccess:
    from declip.tracking import end_invocation

    end_invocation(config, "FINISHED")


onerror:
    from declip.tracking import end_invocation

    end_invocation(config, "FAILED")
