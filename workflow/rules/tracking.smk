# MLflow: the database and the invocation's run are created once here, in the main process;
# each job's run (tagged with the invocation's run id) is recorded by `declip <verb> --job ...`
# (declip.tracking). Also the SLURM preflight.

import shutil
import subprocess
import sys

import yaml


onstart:
    executor = getattr(workflow.executor_plugin, "name", "local")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise WorkflowError(
            "--profile slurm selects the SLURM executor, but `sbatch` is not on PATH. "
            "Run on a cluster login node (module load slurm), or drop --profile slurm to run locally."
        )
    from declip.tracking import start_invocation

    start_invocation(config, targets=sorted(workflow.dag_settings.targets))
    if executor == "local":  # after start_invocation: the server's environment has the tracking variables
        from declip.cli import job_server

        job_server.start(config, os.path.join(config["paths"]["logs"], "job_server.log"))


onsuccess:
    from declip.cli import job_server
    from declip.tracking import comparison_hint, end_invocation

    job_server.stop()
    end_invocation(config, "FINISHED")
    hint = comparison_hint(config)
    if hint:
        print(hint)
    spawn_report()


onerror:
    from declip.cli import job_server
    from declip.tracking import end_invocation

    job_server.stop()
    end_invocation(config, "FAILED")


def spawn_report():
    """`snakemake --report` for this run's targets and config, started once this run has released its
    locks (a report made inside onsuccess sees an empty DAG); its log is logs/report.log."""
    path = config["tables"]["report"]
    if not path:
        return
    state = os.path.join(".snakemake", "declip")
    os.makedirs(state, exist_ok=True)
    dumped = os.path.join(state, "report-config.yaml")
    with open(dumped, "w") as f:
        yaml.safe_dump(dict(config), f)
    # Targets first: --configfile takes every argument after it.
    cmd = [sys.executable, "-m", "snakemake", *sorted(workflow.dag_settings.targets), "--report", path,
           "-s", workflow.main_snakefile, "--configfile", dumped]
    os.makedirs(P["logs"], exist_ok=True)
    waiter = "for i in $(seq 600); do ls .snakemake/locks/*.lock >/dev/null 2>&1 || break; sleep 0.5; done; "
    with open(os.path.join(P["logs"], "report.log"), "w") as log:
        subprocess.Popen(["sh", "-c", waiter + '"$@"', "sh", *cmd], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    print(f"The report is being written to {path} (log: {P['logs']}/report.log).")
