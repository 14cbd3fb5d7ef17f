"""hessflow on a real one-node Slurm (Debian's slurmctld/slurmd/munge on 127.0.0.1).

The suite runs the smoke (the data and checkpoint locally, then one Lanczos job through sbatch
with the SLURM profile, about 30-60 s). The whole demo through Slurm (every job via sbatch, about
3 minutes on 2 idle cores) is ``sudo .venv/bin/python tests/cluster/slurm_test.py``. See
tests/cluster/slurm_test.py for what is set up and checked.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "cluster" / "slurm_test.py"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")

pytestmark = pytest.mark.slow


def skip_unless_possible():
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root:
        pytest.skip("needs root: installs Slurm with apt-get and writes /etc/slurm/slurm.conf")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no Slurm and no apt-get to install it")
    if SYSTEM_CONF.exists() and "hessflow tests/cluster/slurm_test.py" not in SYSTEM_CONF.read_text():
        pytest.skip(f"{SYSTEM_CONF} belongs to a real Slurm here; not replacing it")


def run_script(*args: str, timeout: float) -> str:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=ROOT,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the script stops its workflow and its daemons before exiting
        output, _ = process.communicate(timeout=120)
        pytest.fail(f"{SCRIPT.name} timed out after {timeout} s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-6000:]
    assert "PASSED" in output, output[-3000:]
    return output


def test_one_lanczos_job_through_sbatch():
    skip_unless_possible()
    run_script("--smoke", "--timeout", "420", timeout=600)


# The whole demo through sbatch (about 3 minutes on 2 idle cores) is a command of its own,
# named in the README: `.venv/bin/python tests/cluster/slurm_test.py` (as root).
