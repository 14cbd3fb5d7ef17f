"""Shared helpers for the benchmarks: timing, memory, tables, RESULTS.md.

Standard library and numpy only, so that it imports both in hessflow's venv
(TensorFlow side) and in the peers' venv (PyTorch side).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
OUT_DIR = BENCH_DIR / "out"  # git-ignored scratch (weights, data, child outputs)
PEERS_PYTHON = Path(os.environ.get("HESSFLOW_PEERS_PYTHON", BENCH_DIR / ".venv-peers" / "bin" / "python"))
HESSFLOW_PYTHON = REPO / ".venv" / "bin" / "python"

RESULTS_HEADER = """# hessflow benchmarks: results

Appended by the scripts in `benchmarks/` (see `benchmarks/README.md`), newest last. Each section
names the machine, the date, the load and the versions it ran with. Ratios were measured side by
side in one process (or in worker processes driven in turn by one script), with interleaved
repetitions and medians; absolute times are context only, since the 2-core machine these were
first run on was shared with other jobs (its load average is in every section).

"""


# ------------------------------------------------------------------------------------------------
# Machine, versions
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", "; ")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def load_average() -> str:
    try:
        return " / ".join(f"{load:.1f}" for load in os.getloadavg())
    except OSError:
        return "n/a"


def versions(*names: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine_line() -> str:
    gpu = gpu_name()
    return (f"{platform.node() or 'host'}: {cpu_model()}, {os.cpu_count()} logical cores, "
            f"{memory_gib():.0f} GiB, {platform.system()} {platform.machine()}"
            + (f"; GPU: {gpu}" if gpu else "; no GPU"))


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def interleaved(functions: dict, repetitions: int, warmup: bool = True, log=None) -> dict[str, list[float]]:
    """Time each callable ``repetitions`` times, interleaved: round r runs every function once, in
    an order rotated by r, so that a load change on the machine hits all of them alike.

    Returns ``{name: [seconds per repetition]}``. ``warmup`` runs each once first (tracing,
    compilation, allocator warm-up), untimed.
    """
    names = list(functions)
    if warmup:
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for r in range(repetitions):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
            if log:
                log(f"  rep {r + 1}/{repetitions} {name}: {times[name][-1]:.3f} s")
    return times


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    /proc/self/status VmHWM (per address space, so a child started by a big parent starts low);
    ru_maxrss is not used where VmHWM exists because Linux carries it over fork and execve, so a
    child would report at least its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS; False where the kernel cannot.

    Writing 5 to /proc/self/clear_refs (Linux >= 4.0) does it, so that a later `peak_rss_mib` is
    the peak of what ran since: a steady-state pass without its first call's tracing.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def child_environment(env: dict | None = None, unset: tuple[str, ...] = ()) -> dict:
    """This process's environment less the variables whose names start with one of ``unset``, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not (unset and k.startswith(unset))}
    full_env.update(env or {})
    return full_env


def run_child(argv: list[str], env: dict | None = None, timeout: float = 1800, unset: tuple[str, ...] = ()) -> dict:
    """Run a child process that prints one JSON object on its last stdout line; return it.

    Its environment: `child_environment` (``env``, ``unset``).
    """
    proc = subprocess.run(argv, capture_output=True, text=True, env=child_environment(env, unset), timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {argv} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------
# Tables and RESULTS.md
# ------------------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.01:
        return f"{value:.{digits}g}" if magnitude < 100 else f"{value:.0f}"
    return f"{value:.2e}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def append_results(title: str, body: str, packages: dict[str, str], load_before: str,
                   command: str | None = None) -> None:
    """Append a section to benchmarks/RESULTS.md (created with a header if missing) and print it."""
    command = command or "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    section = "\n".join([
        f"## {title}",
        "",
        f"- run: `{command}`, {now_utc()}",
        f"- machine: {machine_line()}",
        f"- load average (1/5/15 min) at start: {load_before}; at end: {load_average()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in packages.items()),
        "",
        body.rstrip(),
        "",
        "",
    ])
    print("\n" + section)
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    with RESULTS.open("a") as f:
        f.write(section)
