#!/usr/bin/env python3
"""Run hessflow's demo workflow through a real one-node Slurm on this machine.

    sudo .venv/bin/python tests/cluster/slurm_test.py            # the whole (small) demo, every job via sbatch
    sudo .venv/bin/python tests/cluster/slurm_test.py --smoke    # one Lanczos job via sbatch

It needs root (it installs Debian's Slurm and munge with apt-get when they are missing, and writes
``/etc/slurm/slurm.conf``, where ``srun`` inside a job looks for it) and the hessflow venv with
``snakemake-executor-plugin-slurm`` (the ``slurm`` or ``test`` extra). It starts its own munged
(own key and socket), ``slurmctld -D`` and ``slurmd -D`` on 127.0.0.1 with free ports, as child
processes it tracks by PID, runs the workflow with ``--workflow-profile workflow/profiles/slurm``
in a temporary directory, watches ``squeue`` while it runs, checks every job went through sbatch
and every artifact exists, and always stops the daemons again (``finally`` and ``atexit``), then
checks that nothing it started is left running. ``tests/test_slurm.py`` calls it from pytest.

Exit status 0 on success; it prints the wall time of each phase.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
DEMO_CONFIG = ROOT / "config" / "config.yaml"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "munged"]
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by hessflow tests/cluster/slurm_test.py"

# "Job 3 has been submitted with SLURM jobid 7 (log: ...)." (plugin 2.x)
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")


class SlurmTestError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[slurm_test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_slurm_installed() -> float:
    """apt-get install Debian's Slurm and munge if any binary is missing; returns seconds spent."""
    start = time.perf_counter()
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise SlurmTestError(f"Slurm binaries missing ({', '.join(missing)}) and not root: cannot apt-get them")
    log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        check=True, env=env, stdout=subprocess.DEVNULL, timeout=600,
    )
    return time.perf_counter() - start


def binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found is None:
        raise SlurmTestError(f"{name} not found")
    return found


def real_memory_mb() -> int:
    """A bit under the memory available now, so slurmd never finds the node short of it."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return int(info["MemAvailable"] / 1024 * 0.85)


class LocalSlurm:
    """munged + slurmctld + slurmd for one node on 127.0.0.1, tracked and stopped by PID."""

    def __init__(self, root: Path):
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}
        self.wrote_system_conf = False
        self.host = socket.gethostname().split(".")[0]
        self.node = "hessflow1"
        self.cpus = os.cpu_count() or 1
        self.memory_mb = real_memory_mb()
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(SYSTEM_CONF)}
        self._stopped = False

    # -- configuration ---------------------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            f"""{MARKER} ({r}); removed when it stops
ClusterName=hessflow
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.host} CPUs={self.cpus} \
RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=hessflow Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        # srun inside a job reads the default place (SLURM_CONF alone is not enough there).
        if SYSTEM_CONF.exists() and MARKER not in SYSTEM_CONF.read_text():
            raise SlurmTestError(
                f"{SYSTEM_CONF} exists and was not written by this test: refusing to replace a real "
                "Slurm configuration (run this test on a machine without one)"
            )
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.conf, SYSTEM_CONF)
        self.wrote_system_conf = True
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)

    # -- daemons ---------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log(f"started {name} (pid {self.processes[name].pid})")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                output = (self.root / "log" / f"{name}.out").read_text()[-3000:]
                raise SlurmTestError(f"{name} exited with {process.returncode}:\n{output}")

    def start(self, timeout: float = 60) -> None:
        atexit.register(self.stop)
        self.write_config()
        m = self.root / "munge"
        self._spawn("munged", [
            binary("munged"), "-F", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}", f"--log-file={m / 'munged.log'}",
        ])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._spawn("slurmctld", [binary("slurmctld"), "-D", "-f", str(SYSTEM_CONF)])
        self._wait(lambda: self.scontrol_ok("ping"), timeout, "slurmctld to answer")
        self._spawn("slurmd", [binary("slurmd"), "-D", "-N", self.node, "-f", str(SYSTEM_CONF)])
        self._wait(lambda: "IDLE" in self.node_state(), timeout, f"node {self.node} to be IDLE")
        log(f"Slurm up: node {self.node}, {self.cpus} CPUs, {self.memory_mb} MB, conf {self.conf}")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmTestError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=check
        )

    def scontrol_ok(self, *args: str) -> bool:
        try:
            return self.run(binary("scontrol"), *args, timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def node_state(self) -> str:
        try:
            out = self.run(binary("scontrol"), "show", "node", self.node, timeout=10, check=False).stdout
        except subprocess.TimeoutExpired:
            return ""
        match = re.search(r"State=(\S+)", out)
        return match.group(1) if match else ""

    def job_ids(self) -> set[str]:
        """Ids of the jobs slurmctld knows now (pending, running, or recently finished)."""
        out = self.run(binary("squeue"), "-h", "-t", "all", "-o", "%i", timeout=10, check=False).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged by PID, remove /etc/slurm/slurm.conf."""
        if self._stopped:
            return
        self._stopped = True
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                active = self.run(binary("squeue"), "-h", "-o", "%i", timeout=10, check=False).stdout.split()
                if active:
                    log(f"cancelling jobs still in the queue: {' '.join(active)}")
                    self.run(binary("scancel"), *active, timeout=10, check=False)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and self.run(
                        binary("squeue"), "-h", "-o", "%i", timeout=10, check=False
                    ).stdout.split():
                        time.sleep(1)
            except (subprocess.TimeoutExpired, SlurmTestError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            log(f"stopped {name} (pid {process.pid}, exit {process.returncode})")
        if self.wrote_system_conf and SYSTEM_CONF.exists() and MARKER in SYSTEM_CONF.read_text():
            SYSTEM_CONF.unlink()

    def leftovers(self) -> list[str]:
        """Processes still running that this cluster started: its daemons, job steps, or anything
        whose command line names its directory."""
        left = []
        ours = {p.pid for p in self.processes.values()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(entry.name) in ours or str(self.root) in cmdline or cmdline.startswith("slurmstepd"):
                try:
                    state = (entry / "stat").read_text().split(")")[-1].split()[0]
                except OSError:
                    continue
                if state != "Z":
                    left.append(f"{entry.name}: {cmdline.strip()}")
        return left


def write_config(path: Path, smoke: bool) -> dict:
    """The demo config, small: a config override with no GPU requested."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["run_name"] = "slurm_test"
    config["training"].update(steps=20, checkpoint_steps=[0, 20], log_every=10)
    config["lanczos"].update(steps=10, draws=1 if smoke else 2, save_every=5)
    config["density"].update(grid_len=1000)
    for rule in ("train", "lanczos"):
        config["resources"][rule] = {"gpu": 0, "runtime": 10, "mem_mb": 2000}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def expected_targets(config: dict, smoke: bool) -> list[str]:
    base = f"results/{config['run_name']}"
    if smoke:
        return [f"{base}/lanczos/hessian/all/step_20/tridiag_0.npy"]
    return []  # the workflow's default target: everything


def run_workflow(cluster: LocalSlurm, workdir: Path, smoke: bool, timeout: float) -> dict:
    configfile = workdir / "config.yaml"
    config = write_config(configfile, smoke)
    targets = expected_targets(config, smoke)
    logfile = workdir / "snakemake.log"
    command = [
        sys.executable, "-m", "snakemake", *targets,
        "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(configfile),
        "--workflow-profile", str(PROFILE),
        # This test cluster has no accounting database: no sacct, no account to guess.
        "--slurm-status-command", "squeue", "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "3",
        "--seconds-between-status-checks", "3",
        "--jobs", str(max(2, cluster.cpus)),
    ]
    if smoke:  # the data and checkpoint locally first: the smoke is about one Lanczos job via sbatch
        base = f"results/{config['run_name']}"
        local = [
            sys.executable, "-m", "snakemake", f"{base}/checkpoints/step_20.weights.h5",
            "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(configfile),
            "--cores", str(cluster.cpus),
        ]
        log("running locally: " + " ".join(local))
        with open(workdir / "local.log", "w") as out:
            subprocess.run(local, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=timeout)
    log("running: " + " ".join(command))
    seen_in_queue: set[str] = set()
    details: dict[str, str] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                for job_id in cluster.job_ids():
                    if job_id not in seen_in_queue:
                        seen_in_queue.add(job_id)
                        details[job_id] = cluster.run(
                            binary("scontrol"), "show", "job", job_id, timeout=10, check=False
                        ).stdout
            except (subprocess.TimeoutExpired, OSError):
                pass
            done.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    watcher.start()
    with open(logfile, "w") as out:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=cluster.env,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout)
        except BaseException as error:  # timed out, or this script is being stopped: stop Snakemake
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            returncode = None
    wall = time.perf_counter() - start
    done.set()
    watcher.join(timeout=15)
    text = logfile.read_text()
    if returncode != 0:
        raise SlurmTestError(
            f"snakemake {'timed out' if returncode is None else f'exited {returncode}'} after "
            f"{wall:.0f} s; the end of its log ({logfile}):\n{text[-6000:]}"
        )
    submitted = SUBMITTED.findall(text)
    finished = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    return {
        "wall_s": wall, "log": text, "submitted": submitted, "seen": seen_in_queue,
        "details": details, "config": config, "finished": finished,
        "targets": targets,
    }


def check(result: dict, workdir: Path, smoke: bool) -> None:
    text, submitted = result["log"], result["submitted"]
    if not result["finished"]:
        raise SlurmTestError("snakemake's log does not report 100% done")
    total = int(result["finished"][-1][1])
    # `all` only gathers the targets: Snakemake finishes it itself, there is nothing to submit.
    local = len(re.findall(r"^localrule (?!all:)\w+:", text, flags=re.M))
    total -= len(re.findall(r"^localrule all:", text, flags=re.M))
    remote = total - local
    if len(set(submitted)) != remote or remote < 1:
        raise SlurmTestError(
            f"{total} jobs, {local} local, but {len(set(submitted))} Slurm job ids in the log: {submitted}"
        )
    if smoke and not re.search(r"^rule lanczos:", text, flags=re.M):
        raise SlurmTestError("the smoke run did not submit the Lanczos job")
    if not smoke and local:
        raise SlurmTestError(f"{local} jobs ran locally; every job should go through sbatch")
    unseen = set(submitted) - result["seen"]
    if unseen:
        raise SlurmTestError(f"Slurm job ids {sorted(unseen)} never showed up in squeue")
    for job_id in submitted:
        detail = result["details"].get(job_id, "")
        if f"JobId={job_id}" not in detail or "Partition=hessflow" not in detail:
            raise SlurmTestError(f"scontrol show job {job_id} did not describe it:\n{detail}")
    config = result["config"]
    base = workdir / "results" / config["run_name"]
    if smoke:
        expected = [workdir / t for t in result["targets"]]
    else:
        manifest = (base / "manifest.tsv").read_text().splitlines()
        expected = [base / line.split("\t")[0] for line in manifest[1:]]
        expected.append(base / "manifest.tsv")
        if len(expected) < 20:
            raise SlurmTestError(f"manifest lists only {len(expected) - 1} artifacts")
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        raise SlurmTestError(f"artifacts missing: {missing}")
    states = [p for p in base.glob("lanczos/**/.state_*")]
    if states:
        raise SlurmTestError(f"Lanczos state files left behind: {states}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one Lanczos job through sbatch (the rest local)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the workflow may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    def stop_on_signal(signum, frame):  # SIGTERM (e.g. from a test runner): clean up via finally
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    total_start = time.perf_counter()
    installed_s = ensure_slurm_installed()
    root = Path(tempfile.mkdtemp(prefix="hessflow-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root / "cluster")
    workdir = root / "work"
    workdir.mkdir()
    ok = False
    try:
        started = time.perf_counter()
        cluster.start()
        start_s = time.perf_counter() - started
        result = run_workflow(cluster, workdir, args.smoke, args.timeout)
        check(result, workdir, args.smoke)
        ok = True
    finally:
        cluster.stop()
        left = cluster.leftovers()
        if left:
            for line in left:
                pid = int(line.split(":")[0])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise SlurmTestError("processes left running after the daemons stopped:\n" + "\n".join(left))
        if not args.keep and ok:
            shutil.rmtree(root, ignore_errors=True)
        elif not ok:
            log(f"kept {root} for inspection (Slurm logs in {root}/cluster/log)")
    summary = {
        "mode": "smoke" if args.smoke else "full",
        "slurm_jobs": len(set(result["submitted"])),
        "slurm_job_ids": sorted(set(result["submitted"]), key=int),
        "install_s": round(installed_s, 1),
        "cluster_start_s": round(start_s, 1),
        "workflow_s": round(result["wall_s"], 1),
        "total_s": round(time.perf_counter() - total_start, 1),
    }
    log("PASSED " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
