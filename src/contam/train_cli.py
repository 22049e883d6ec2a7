"""Training on several GPUs of one node: ``accelerate launch`` of contam.train.

Rule ``train`` runs its glue script in one process. When the run trains in
more than one process (its ``processes`` setting, one per GPU) the glue calls
:func:`launch`, which writes the job to a JSON file next to the outputs and
starts

    python -m accelerate.commands.launch --multi_gpu --num_processes N \\
        -m contam.train_cli JOB.json

Every process runs :func:`main`, i.e. ``contam.train.train`` on the same
arguments; accelerate gives each its rank and device. The same command on a
CPU-only machine (``device: cpu``) runs N processes over gloo, which is how the
tests exercise it.

SIGTERM or SIGUSR1 sent to the glue (SLURM's preemption warning) is passed to
the whole process group of the launch as SIGTERM: every rank stops after its
current step, the main rank writes the checkpoint, and the job fails so that
Snakemake (or SLURM's requeue) reruns it from there. SIGTERM rather than SIGUSR1
because torch's elastic agent ends on an unhandled SIGUSR1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A free TCP port for the rendezvous, so that two jobs on one node never clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(job_file: str | Path, processes: int, threads_per_process: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes", str(processes),
        "--num_machines", "1",
        "--mixed_precision", "no",  # contam.train autocasts from the recipe itself
        "--dynamo_backend", "no",  # and compiles from the recipe itself
        "--num_cpu_threads_per_process", str(max(1, threads_per_process)),
        "--main_process_port", str(free_port()),
        "-m", "contam.train_cli", str(job_file),
    ]


def launch(job: dict, processes: int, threads: int = 1, stream=None) -> int:
    """Run ``job`` (the keyword arguments of :func:`main`) in ``processes`` processes.

    Returns the launcher's exit status (non-zero after a preemption or a failure).
    ``stream`` receives the processes' output (the rule's log file). The job
    file records ``processes``, which every process checks against the count
    it was launched in.
    """
    if job.get("processes", processes) != processes:
        raise ValueError(f"job is for {job['processes']} training processes, but {processes} were to be launched")
    job = {**job, "processes": processes}
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    job_file = out_dir / "launch.json"
    job_file.write_text(json.dumps(job, indent=1, sort_keys=True))
    command = launch_command(job_file, processes, threads // processes)
    log.info("launching %d processes: %s", processes, " ".join(command))
    stream = stream if stream is not None else sys.stderr
    stream.flush()
    proc = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)

    def forward(signum, frame) -> None:
        log.warning("got signal %d: asking the %d training processes to checkpoint and stop", signum, processes)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if rc == 0:
        job_file.unlink(missing_ok=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    """One training process of a launch: ``train.train`` on the job in the JSON file."""
    import torch

    from contam import train
    from contam.io import read_parquet

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m contam.train_cli JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        manifest = read_parquet(job["manifest"])
        if job.get("cached"):
            # prepare.enabled: read the cached copies (see contam.prepare).
            from contam.prepare import cached_paths

            manifest = cached_paths(manifest, [read_parquet(path) for path in job["cached"]])
        if job.get("task") == "captioning":
            from contam.captioner import train_captioner

            summary = train_captioner(
                manifest,
                job["captioner"],
                job["recipe"],
                int(job["seed"]),
                out_dir=job["out_dir"],
                fingerprint=job["fingerprint"],
                device=torch.device(job.get("device", "cpu")),
                processes=int(job["processes"]),
                num_workers=int(job.get("num_workers", 0)),
                stop_after_steps=job.get("stop_after_steps"),
            )
            if rank == 0:
                logging.getLogger("contam").info("trained: %s", summary)
            return 0
        summary = train.train(
            manifest,
            job["model"],
            job["recipe"],
            int(job["num_classes"]),
            int(job["seed"]),
            out_dir=job["out_dir"],
            fingerprint=job["fingerprint"],
            device=torch.device(job.get("device", "cpu")),
            num_workers=int(job.get("num_workers", 0)),
            stop_after_steps=job.get("stop_after_steps"),
            processes=int(job["processes"]),
            decode=job.get("decode", "cpu"),
        )
    except train.Preempted as stopped:
        logging.getLogger("contam").warning("%s", stopped)
        return 3
    if rank == 0:
        logging.getLogger("contam").info("trained: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
