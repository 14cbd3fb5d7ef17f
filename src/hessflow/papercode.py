"""Files of the paper's TF1 code (google/spectral-density), read into hessflow's layouts.

The paper code's ``LanczosExperiment`` wrote, after each finished draw k (counting from 1),

* ``tridiag_{k}``: its whole (m, m, num_draws) float64 buffer of tridiagonals, draw j in
  ``[:, :, j]``, the draws not yet run all zeros;
* ``lanczos_vec_{k}``: the (n, m) float64 Lanczos vectors (columns) of the draw just finished,

through ``np.save`` on an open file, so the names have **no** ``.npy`` suffix (its density
notebook reads ``tridiag_1.npy``: files renamed or saved by path get the suffix). The usual layout
ran one draw per job (``num_draws = 1``): one folder per draw holding ``tridiag_1`` of shape
(m, m, 1) and ``lanczos_vec_1`` of shape (n, m).

:func:`load_paper_draws` reads such files or folders, with or without the suffix, into the
(draws, m, m) array hessflow's ``tridiags.npy`` holds (which is also the ``[num_draws, order,
order]`` ``tridiag_list`` the paper's ``density.tridiag_to_density`` takes), and n from the Lanczos
vectors. :func:`render_paper_draws` makes a density, statistics and a figure of them with the
same functions as the workflow. The paper code's operator was the whole model's Hessian (hessflow's
default curvature ``hessian`` on block ``all``); ``operator`` and ``block`` name another one in the
figure's title (e.g. a Gauss-Newton run of a modified paper code). Command line::

    python -m hessflow.papercode run_dir/draw_0 run_dir/draw_1 ... --out imported/ [--dim N]
        [--operator {hessian,ggn}] [--block NAME]

Imports numpy, scipy, pandas and matplotlib only: never TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hessflow import artifacts
from hessflow.layout import DEFAULT_BLOCK, DEFAULT_OPERATOR, OPERATORS
from hessflow.plots import save_figure
from hessflow.reproduce import FIGURE_DPI, aggregate, density_and_stats, density_step_figure

__all__ = ["PaperDraws", "load_paper_array", "load_paper_draws", "paper_tridiags", "render_paper_draws"]

#: The density parameters of the paper code (and of hessflow's defaults).
PAPER_DENSITY = {"sigma_squared": 1e-5, "grid_len": 10_000, "grid_expand": 0.01, "negative_threshold": 1e-3,
                 "confidence_level": 0.95}

_NAME = re.compile(r"^(tridiag|lanczos_vec)_(\d+)(\.npy)?$")


def load_paper_array(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` a file the paper code saved, at ``path`` or ``path + '.npy'`` (no pickles)."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".npy")):
        if candidate.is_file():
            return np.load(candidate, allow_pickle=False)
    raise FileNotFoundError(f"neither {path} nor {path}.npy exists")


def paper_tridiags(array: np.ndarray) -> list[np.ndarray]:
    """The finished draws of a paper-code tridiagonal buffer, as (m, m) float64 arrays.

    ``array``: (m, m, num_draws) as the paper code saved it, or a plain (m, m). Slices that are
    all zeros (draws the paper code had not run yet when it saved) are dropped.
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[0] != array.shape[1]:
        raise ValueError(f"a paper-code tridiagonal is (m, m) or (m, m, draws); got shape {array.shape}")
    return [array[:, :, j].copy() for j in range(array.shape[2]) if np.any(array[:, :, j])]


@dataclass
class PaperDraws:
    """Draws imported from paper-code files."""

    tridiags: np.ndarray  # (draws, m, m): hessflow's tridiags.npy layout
    dim: int | None  # n, from the Lanczos vectors (None when none were found)
    sources: list[str]  # the tridiagonal files read, in draw order


def _latest(folder: Path, kind: str) -> Path | None:
    """The ``{kind}_{k}`` file of a folder with the largest k (it holds every finished draw)."""
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and match.group(1) == kind and entry.is_file():
            found.append((int(match.group(2)), entry))
    return max(found)[1] if found else None


def load_paper_draws(paths: Sequence[str | os.PathLike]) -> PaperDraws:
    """Read paper-code output into a (draws, m, m) array and the dimension n.

    ``paths``: folders (one per job, as the paper's runs wrote them; the ``tridiag_{k}`` with the
    largest k is read, and ``lanczos_vec_{k}`` beside it for n) or ``tridiag_{k}`` files (the
    ``lanczos_vec_{k}`` beside each, when present, gives n). Draws are taken in the order given.
    """
    tridiags, dims, sources = [], set(), []
    for path in map(Path, paths):
        if path.is_dir():
            tridiag_file = _latest(path, "tridiag")
            if tridiag_file is None:
                raise FileNotFoundError(f"{path}: no tridiag_<k> file")
        else:
            tridiag_file = path
        draws = paper_tridiags(load_paper_array(tridiag_file))
        if not draws:
            raise ValueError(f"{tridiag_file}: every draw is all zeros (no finished draw)")
        tridiags += draws
        sources += [str(tridiag_file)] * len(draws)
        match = _NAME.match(tridiag_file.name)
        if not match or match.group(1) != "tridiag":
            continue  # a file of another name: no Lanczos vectors to pair it with
        vectors_file = tridiag_file.with_name(f"lanczos_vec_{match.group(2)}")
        try:
            vectors = load_paper_array(vectors_file)
        except FileNotFoundError:
            continue
        if vectors.ndim != 2 or vectors.shape[1] != draws[0].shape[0]:
            raise ValueError(
                f"{vectors_file}: expected (n, {draws[0].shape[0]}) Lanczos vectors; got shape {vectors.shape}"
            )
        dims.add(int(vectors.shape[0]))
    sizes = {t.shape[0] for t in tridiags}
    if len(sizes) != 1:
        raise ValueError(f"the draws have different numbers of Lanczos steps: {sorted(sizes)}")
    if len(dims) > 1:
        raise ValueError(f"the Lanczos vectors disagree on the dimension n: {sorted(dims)}")
    return PaperDraws(tridiags=np.stack(tridiags), dim=dims.pop() if dims else None, sources=sources)


def render_paper_draws(
    draws: PaperDraws,
    out: str | os.PathLike,
    density_config: Mapping = PAPER_DENSITY,
    dim: int | None = None,
    title_step: int = 0,
    *,
    operator: str = DEFAULT_OPERATOR,
    block: str = DEFAULT_BLOCK,
) -> list[Path]:
    """Write ``tridiags.npy``, ``ritz_values.npy``, ``ritz_weights.npy``, ``density.npy``,
    ``stats.json`` and ``density.png`` of imported draws into ``out``, as the workflow does for
    one checkpoint and curvature (``operator`` on ``block``, the figure's title; default the
    whole model's Hessian, as the paper code computed). ``dim`` overrides the n read from the
    Lanczos vectors (one of them is needed for the trace)."""
    dim = dim if dim is not None else draws.dim
    if dim is None:
        raise ValueError("the dimension n is unknown: no lanczos_vec_<k> file was found; give dim")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stacked, values, weights = aggregate(list(draws.tridiags))
    density, stats = density_and_stats(values, weights, dim, density_config)
    written = [
        artifacts.save_npy(out / "tridiags.npy", stacked),
        artifacts.save_npy(out / "ritz_values.npy", values),
        artifacts.save_npy(out / "ritz_weights.npy", weights),
        artifacts.save_npy(out / "density.npy", density),
        artifacts.save_json(out / "stats.json", stats),
    ]
    figure = density_step_figure(density, stats, title_step, operator, block)
    written.append(save_figure(figure, out / "density.png", dpi=FIGURE_DPI))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hessflow.papercode",
        description="Import tridiag_<k>/lanczos_vec_<k> files of the paper's TF1 code (google/spectral-density) "
        "and write hessflow's tridiags.npy, Ritz arrays, density.npy, stats.json and a figure.",
    )
    parser.add_argument(
        "paths", nargs="+", help="folders holding tridiag_<k> (one per draw or job), or tridiag_<k> files"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dim", type=int, help="the dimension n, when no lanczos_vec_<k> file is at hand")
    parser.add_argument("--step", type=int, default=0, help="checkpoint step, for the figure's title")
    parser.add_argument("--operator", choices=OPERATORS, default=DEFAULT_OPERATOR,
                        help="the curvature operator the files hold, for the figure's title (default: hessian)")
    parser.add_argument("--block", default=DEFAULT_BLOCK,
                        help="the block of variables the files are of, for the figure's title (default: all)")
    for key, value in PAPER_DENSITY.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    draws = load_paper_draws(args.paths)
    config = {key: getattr(args, key) for key in PAPER_DENSITY}
    for path in render_paper_draws(draws, args.out, config, dim=args.dim, title_step=args.step,
                                   operator=args.operator, block=args.block):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
