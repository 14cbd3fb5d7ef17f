"""What a user reads on the console: job output goes to the job's log, a missing config is one line.

hessflow.jobs.start_job (every script's first call) sends Python's streams *and* file descriptors
1 and 2 to the job's log, so that TensorFlow's C++ lines (oneDNN notices, cuInit errors on a
machine without a GPU), which bypass sys.stderr, do not reach the console; and it sizes the
thread pools to the rule's threads. Each case runs in a fresh Python process, as a job does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# A TensorFlow/absl C++ log line: severity letter, MMDD, time (e.g. "E0000 00:00:...").
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.M)


def run_job(code: str, tmp_path: Path, threads: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` after ``job = <a stand-in for a script's snakemake object>`` in a new process."""
    prelude = textwrap.dedent(f"""
        import json, os, subprocess, sys
        from types import SimpleNamespace
        job = SimpleNamespace(log=[{str(tmp_path / "job.log")!r}], threads={threads})
    """)
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("TF_", "OMP_", "OPENBLAS_", "MKL_"))}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, env={**clean, **(env or {})}, cwd=tmp_path, timeout=300)


def test_python_output_descriptor_2_and_child_processes_all_go_to_the_log(tmp_path):
    done = run_job("""
        from hessflow.jobs import start_job
        start_job(job)
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"descriptor 1\\n")
        os.write(2, b"descriptor 2 (where C++ libraries write)\\n")
        subprocess.run(["sh", "-c", "echo child stderr >&2"], check=True)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    log = (tmp_path / "job.log").read_text()
    for line in ["python stdout", "python stderr", "descriptor 1", "descriptor 2 (where C++ libraries write)",
                 "child stderr"]:
        assert line in log.splitlines(), line


def test_an_uncaught_error_is_in_the_log_not_on_the_console(tmp_path):
    done = run_job("""
        from hessflow.jobs import start_job
        start_job(job)
        raise RuntimeError("the job failed here")
    """, tmp_path)
    assert done.returncode == 1
    assert (done.stdout, done.stderr) == ("", "")
    assert "RuntimeError: the job failed here" in (tmp_path / "job.log").read_text()


def test_thread_limits_are_set_before_numpy_loads(tmp_path):
    done = run_job("""
        from hessflow.jobs import THREAD_VARIABLES, start_job
        start_job(job)
        with open("env.json", "w") as handle:
            json.dump({name: os.environ.get(name) for name in [*THREAD_VARIABLES, "TF_CPP_MIN_LOG_LEVEL"]}, handle)
    """, tmp_path, threads=3)
    assert done.returncode == 0, (tmp_path / "job.log").read_text()
    assert json.loads((tmp_path / "env.json").read_text()) == {
        "OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
        "TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "3", "TF_CPP_MIN_LOG_LEVEL": "1",
    }


def test_a_log_level_the_user_set_is_kept(tmp_path):
    done = run_job("""
        from hessflow.jobs import start_job
        start_job(job)
        open("level.txt", "w").write(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    """, tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0
    assert (tmp_path / "level.txt").read_text() == "3"


@pytest.mark.slow  # starts TensorFlow or Snakemake
def test_a_tensorflow_job_sizes_both_pools_and_its_cpp_lines_reach_only_the_log(tmp_path):
    done = run_job("""
        from hessflow.jobs import start_job, tensorflow_threads
        start_job(job, gpus=0, tensorflow=True)
        import tensorflow as tf
        total = float(tf.reduce_sum(tf.ones((4, 4))))  # the runtime starts: devices probed (cuInit)
        threading = tf.config.threading
        with open("pools.json", "w") as handle:
            json.dump({"intra": threading.get_intra_op_parallelism_threads(),
                       "inter": threading.get_inter_op_parallelism_threads(),
                       "recorded": tensorflow_threads(), "total": total}, handle)
    """, tmp_path, threads=2)
    log = (tmp_path / "job.log").read_text()
    assert done.returncode == 0, log
    assert json.loads((tmp_path / "pools.json").read_text()) == {
        "intra": 2, "inter": 2, "recorded": 2, "total": 16.0}
    assert (done.stdout, done.stderr) == ("", "")
    assert "TensorFlow thread pools: 2 intra-op, 2 inter-op" in log
    assert CPP_LOG_LINE.search(log), "TensorFlow printed no C++ line: nothing checked its redirection"


@pytest.mark.slow  # starts TensorFlow or Snakemake
def test_a_worker_process_reports_the_threads_it_inherited(tmp_path):
    done = run_job("""
        import tensorflow as tf
        from hessflow.jobs import tensorflow_threads
        open("threads.txt", "w").write(str(tensorflow_threads()))
    """, tmp_path, env={"TF_NUM_INTRAOP_THREADS": "4", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "threads.txt").read_text() == "4"


@pytest.mark.slow  # starts TensorFlow or Snakemake
def test_snakemake_without_a_config_says_so_in_one_line(tmp_path):
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
                           "--workflow-profile", "none", "--cores", "1", "-n"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "hessflow: no config: pass --configfile FILE" in output
    assert "Traceback" not in output and "additionalProperties" not in output
    assert len(output.splitlines()) <= 5, output


@pytest.mark.slow  # starts TensorFlow or Snakemake
def test_snakemake_from_another_folder_finds_the_default_profile_and_its_config(tmp_path):
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "-n"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "rule lanczos:" in output and "output: results/demo/" in output  # the demo, planned in this folder
    assert not (tmp_path / "results").exists()  # a dry run
