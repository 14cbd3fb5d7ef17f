"""Item 4 -- the workflow's own cost: the demo run's Snakemake `benchmark:` TSVs summed per rule,
and the scheduling overhead.

Runs the offline demo in a fresh temporary directory:

    snakemake --cores 2 --directory <tmp> --snakefile workflow/Snakefile --configfile config/config.yaml

then sums the ``s`` (wall seconds) and ``cpu_time`` columns of every TSV under
``<tmp>/results/<run_name>/benchmarks/`` per rule (the TSV's first path component), and reports the
overhead as ``wall − Σ job seconds / cores``: the time the run took beyond perfectly packing its
jobs onto the cores (Snakemake's start-up, DAG building, job scheduling, and idle cores while the
DAG is narrow, e.g. during training).

Usage: .venv/bin/python benchmarks/workflow_cost.py [--cores 2] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    load_before = common.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="hessflow-workflow-cost-"))
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [str(venv_bin / "snakemake"), "--cores", str(args.cores), "--directory", str(tmp),
               "--snakefile", str(common.REPO / "workflow" / "Snakefile"),
               "--configfile", str(common.REPO / args.configfile)]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=common.REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (common.OUT_DIR).mkdir(exist_ok=True)
    (common.OUT_DIR / "workflow_cost_snakemake.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit(f"snakemake failed (rc {proc.returncode}); log in benchmarks/out/, run dir {tmp}")

    per_rule = defaultdict(lambda: {"jobs": 0, "s": 0.0, "cpu": 0.0, "max_rss": 0.0})
    roots = list(tmp.glob("results/*/benchmarks"))
    for root in roots:
        for tsv in sorted(root.rglob("*.tsv")):
            rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
            with tsv.open() as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    entry = per_rule[rule]
                    entry["jobs"] += 1
                    entry["s"] += float(row["s"])
                    cpu = row.get("cpu_time", "NA")
                    entry["cpu"] += float(cpu) if cpu not in ("NA", "", None) else 0.0
                    rss = row.get("max_rss", "NA")
                    if rss not in ("NA", "", None):
                        entry["max_rss"] = max(entry["max_rss"], float(rss))
    total_s = sum(e["s"] for e in per_rule.values())
    total_cpu = sum(e["cpu"] for e in per_rule.values())
    rows = [[rule, e["jobs"], e["s"], e["s"] / total_s, e["cpu"], e["max_rss"]]
            for rule, e in sorted(per_rule.items(), key=lambda kv: -kv[1]["s"])]
    rows.append(["**all jobs**", sum(e["jobs"] for e in per_rule.values()), total_s, 1.0, total_cpu, None])
    overhead = wall - total_s / args.cores
    summary = [
        ["wall time of `snakemake` (s)", wall],
        ["Σ job wall seconds (benchmark TSVs)", total_s],
        [f"Σ job seconds / {args.cores} cores", total_s / args.cores],
        ["scheduling overhead = wall − Σ/cores (s)", overhead],
        ["overhead / wall", overhead / wall],
        ["mean jobs running (Σ job s / wall)", total_s / wall],
    ]
    body = "\n".join([
        f"The demo (`{args.configfile}`), fresh directory, `--cores {args.cores}`.",
        "",
        common.markdown_table(["rule", "jobs", "Σ s", "share", "Σ cpu_time s", "max RSS MB (max over jobs)"], rows),
        "",
        common.markdown_table(["quantity", "value"], summary),
        "",
        "The overhead includes Snakemake's own start-up and DAG evaluation, the gaps between jobs, and the "
        "cores left idle while the DAG is narrow (data preparation and training run alone, one core busy): "
        "it is an upper bound on what the scheduler itself costs.",
    ])
    common.append_results("Item 4: the workflow's own cost (workflow_cost.py)", body,
                          common.versions("snakemake", "tensorflow", "keras"), load_before)
    if args.keep:
        print(f"run directory kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
