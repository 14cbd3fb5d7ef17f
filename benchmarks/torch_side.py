"""PyTorch side of the peer benchmarks (runs in the peers' venv, benchmarks/.venv-peers).

Faithful ports of the benchmark models (weights transferred from Keras), and the three peers
driven through their own public APIs:

- PyHessian 0.1 (``pyhessian.hessian``): ``dataloader_hv_product``, ``density``, ``eigenvalues``;
- curvlinops-for-pytorch (``HessianLinearOperator``): ``@``, ``papyan2020traces`` Lanczos
  spectrum, ``fast_lanczos``, and scipy ``eigsh`` on ``to_scipy()``;
- hessian-eigenthings 1.0 (``HessianOperator``): ``matvec``, ``lanczos_tridiagonal``,
  ``spectral_density``, ``lanczos``;

plus ``torch_dbp``, a plain double-backprop HVP in a dozen lines, as the framework's own floor.

Two modes:
``torch_side.py worker``  -- JSON commands on stdin, one JSON answer per line on stdout (the
                              orchestrator, peers.py, interleaves them with its TF measurements);
``torch_side.py memjob SPEC TOOL STEPS [DEVICE]`` -- one Lanczos job in a fresh process, prints
                              baseline and peak RSS as JSON.

Vectors cross the boundary in Keras order and layout (conv kernels HWIO, dense kernels (in, out)),
flattened in C order -- hessflow's convention; this module converts.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LEAKY = 0.1


# ------------------------------------------------------------------------------------------------
# PyHessian 0.1 calls torch.eig, removed in torch 2: a shim (torch.linalg.eigh) for a symmetric (tridiagonal) matrix.
# ------------------------------------------------------------------------------------------------
def _eig_shim(matrix, eigenvectors=False):
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


torch.eig = _eig_shim  # torch 2 keeps a torch.eig that only raises


# ------------------------------------------------------------------------------------------------
# Models (parameter order = Keras trainable_variables order)
# ------------------------------------------------------------------------------------------------
class ResNetNoBN(nn.Module):
    """Port of tfkit.resnet_nobn: explicit padding 1 on every conv (as the Keras model)."""

    def __init__(self):
        super().__init__()
        self.init_conv = nn.Conv2d(3, 16, 3, 1, padding=1)
        self.units = nn.ModuleList()
        self.plan = []
        width = 16
        for filters, stride in zip((16, 32, 64), (1, 2, 2)):
            self.units.append(nn.ModuleList([nn.Conv2d(width, filters, 3, stride, padding=1),
                                             nn.Conv2d(filters, filters, 3, 1, padding=1)]))
            self.plan.append((width, filters, stride))
            width = filters
        self.logits = nn.Linear(64, 10)

    def forward(self, x):  # x: NCHW
        x = self.init_conv(x)
        for (width, filters, stride), (conv1, conv2) in zip(self.plan, self.units):
            shortcut = x
            y = conv2(F.leaky_relu(conv1(F.leaky_relu(x, LEAKY)), LEAKY))
            if filters != width:
                shortcut = F.avg_pool2d(shortcut, stride, stride)
                half = (filters - width) // 2
                shortcut = F.pad(shortcut, (0, 0, 0, 0, half, half))
            x = y + shortcut
        x = F.leaky_relu(x, LEAKY).mean(dim=(2, 3))
        return self.logits(x)


def _same_padding(size, stride, kernel=3):
    """TensorFlow's 'same' padding (before, after) for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SmallCNN(nn.Module):
    """Port of hessflow.models.small_cnn(batch_norm=False): tanh, TF 'same' padding, NHWC flatten."""

    def __init__(self, input_hw=8, in_channels=1, filters=(8, 16), strides=(1, 2), classes=10):
        super().__init__()
        self.convs = nn.ModuleList()
        self.pads = []
        size, channels = input_hw, in_channels
        for width, stride in zip(filters, strides):
            self.convs.append(nn.Conv2d(channels, width, 3, stride, padding=0))
            before, after = _same_padding(size, stride)
            self.pads.append((before, after, before, after))
            size, channels = math.ceil(size / stride), width
        self.dense = nn.Linear(size * size * channels, classes)

    def forward(self, x):  # x: NCHW
        for conv, pad in zip(self.convs, self.pads):
            x = torch.tanh(conv(F.pad(x, pad)))
        return self.dense(x.permute(0, 2, 3, 1).flatten(1))  # Keras flattens NHWC


class MLP(nn.Module):
    """Port of hessflow.models.mlp(hidden=(32,), batch_norm=False, activation='tanh')."""

    def __init__(self, inputs=64, hidden=32, classes=10):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):  # x: NHWC, flattened as Keras does
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


class BatchStatNorm(nn.Module):
    """Batch norm that always normalizes with the batch's own statistics (biased variance), as
    hessflow's operator in ``batch_norm="train"`` mode; no running statistics.

    ``nn.BatchNorm*`` would switch to running statistics under ``model.eval()``, which PyHessian
    calls on every model it is given: the peers would then differentiate another objective.
    Keras' epsilon (hessflow.models.BATCH_NORM_EPSILON, 1e-3), trainable gamma and beta.

    Written out rather than ``F.batch_norm(..., training=True)``: under curvlinops' ``vmap`` over
    vectors, the second derivative through ``F.batch_norm`` came out 3.5% off (relative norm of
    one HVP on the digits MLP with BN; PyHessian, hessian-eigenthings and plain double backprop
    agreed with hessflow to 5e-7), while this form agrees to 1e-7 in every tool."""

    def __init__(self, channels, eps=1e-3):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))  # Keras gamma
        self.bias = nn.Parameter(torch.zeros(channels))  # Keras beta
        self.eps = eps

    def forward(self, x):  # x: (N, C) or (N, C, H, W)
        axes = [0, *range(2, x.dim())]
        mean = x.mean(dim=axes, keepdim=True)
        variance = x.var(dim=axes, unbiased=False, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(variance + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class MLPBatchNorm(nn.Module):
    """Port of hessflow.models.mlp(hidden=(32,), batch_norm=True): dense (no bias) -> BN -> tanh -> dense.

    Parameters are registered in Keras' order: kernel, gamma, beta, logits kernel, logits bias."""

    def __init__(self, inputs=64, hidden=32, classes=10):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden, bias=False)
        self.norm = BatchStatNorm(hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.hidden(x.flatten(1)))))


class SmallCNNBatchNorm(nn.Module):
    """Port of hessflow.models.small_cnn(batch_norm=True): [conv (no bias) -> BN -> tanh] x 2 -> dense.

    Conv and norm layers alternate in one ModuleList so that the parameters come in Keras' order
    (conv kernel, gamma, beta, per layer)."""

    def __init__(self, input_hw=8, in_channels=1, filters=(8, 16), strides=(1, 2), classes=10):
        super().__init__()
        self.layers = nn.ModuleList()
        self.pads = []
        size, channels = input_hw, in_channels
        for width, stride in zip(filters, strides):
            self.layers.append(nn.Conv2d(channels, width, 3, stride, padding=0, bias=False))
            self.layers.append(BatchStatNorm(width))
            before, after = _same_padding(size, stride)
            self.pads.append((before, after, before, after))
            size, channels = math.ceil(size / stride), width
        self.dense = nn.Linear(size * size * channels, classes)

    def forward(self, x):  # x: NCHW
        for i, pad in enumerate(self.pads):
            x = torch.tanh(self.layers[2 * i + 1](self.layers[2 * i](F.pad(x, pad))))
        return self.dense(x.permute(0, 2, 3, 1).flatten(1))


MODELS = {"resnet_nobn": (ResNetNoBN, "nchw"), "small_cnn": (SmallCNN, "nchw"), "mlp": (MLP, "nhwc"),
          "mlp_bn": (MLPBatchNorm, "nhwc"), "small_cnn_bn": (SmallCNNBatchNorm, "nchw")}


def keras_to_torch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # conv kernel HWIO -> OIHW
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return array.T
    return array


def torch_to_keras(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


class Problem:
    """Model, data, and vector conversions from a spec file written by the TF side."""

    def __init__(self, spec_path: str, device: str = "cpu"):
        spec = np.load(spec_path)
        self.device = torch.device(device)
        kind = str(spec["model"])
        cls, layout = MODELS[kind]
        self.model = cls().to(self.device)
        params = list(self.model.parameters())
        keras_weights = [spec[f"w{i}"] for i in range(int(spec["num_weights"]))]
        if len(params) != len(keras_weights):
            raise ValueError(f"{kind}: torch has {len(params)} parameters, Keras {len(keras_weights)}")
        with torch.no_grad():
            for p, w in zip(params, keras_weights):
                converted = keras_to_torch(w)
                if tuple(p.shape) != converted.shape:
                    raise ValueError(f"{kind}: shape {tuple(p.shape)} vs Keras {w.shape}")
                p.copy_(torch.from_numpy(np.ascontiguousarray(converted)))
        self.params = params
        self.keras_shapes = [w.shape for w in keras_weights]
        self.dim = sum(p.numel() for p in params)
        x = spec["x"]
        if layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        y = torch.from_numpy(spec["y"].astype(np.int64)).to(self.device)
        batch = int(spec["batch"])
        if len(x) % batch:
            raise ValueError("the peers weight batches differently: use equal batches")
        self.batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        self.num_examples = len(x)
        self.criterion = nn.CrossEntropyLoss()  # mean over the batch; no weight decay (see peers.py)
        self.kind = kind

    # Keras-flat numpy <-> torch tensors
    def to_list(self, flat: np.ndarray) -> list[torch.Tensor]:
        out, offset = [], 0
        for _p, shape in zip(self.params, self.keras_shapes):
            size = int(np.prod(shape))
            piece = keras_to_torch(flat[offset:offset + size].reshape(shape))
            out.append(torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32)).to(self.device))
            offset += size
        return out

    def to_flat_torch(self, flat: np.ndarray) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in self.to_list(flat)])

    def from_list(self, tensors) -> np.ndarray:
        return np.concatenate([torch_to_keras(t.detach().cpu().numpy().astype(np.float64)).ravel()
                               for t in tensors])

    def from_flat_torch(self, flat: torch.Tensor) -> np.ndarray:
        tensors, offset = [], 0
        for p in self.params:
            tensors.append(flat[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        return self.from_list(tensors)


# ------------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------------
class Tools:
    def __init__(self, problem: Problem):
        self.p = problem
        self._ops = {}

    def op(self, tool):
        if tool in self._ops:
            return self._ops[tool]
        p = self.p
        if tool == "pyhessian":
            from pyhessian import hessian
            op = hessian(p.model, p.criterion, dataloader=p.batches, cuda=p.device.type == "cuda")
        elif tool == "curvlinops":
            from curvlinops import HessianLinearOperator
            op = HessianLinearOperator(p.model, p.criterion, p.params, p.batches, check_deterministic=False,
                                       num_data=p.num_examples)
        elif tool == "eigenthings":
            from hessian_eigenthings import HessianOperator, supervised_loss
            op = HessianOperator(p.model, p.batches, supervised_loss(p.criterion), full_dataset=True)
        elif tool == "torch_dbp":
            op = None
        else:
            raise ValueError(tool)
        self._ops[tool] = op
        return op

    def _dbp(self, vectors):
        total = [torch.zeros_like(t) for t in vectors]
        for x, y in self.p.batches:
            loss = self.p.criterion(self.p.model(x), y)
            grads = torch.autograd.grad(loss, self.p.params, create_graph=True)
            hv = torch.autograd.grad(grads, self.p.params, grad_outputs=vectors)
            total = [a + h * len(x) for a, h in zip(total, hv)]
        return [t / self.p.num_examples for t in total]

    def hvp(self, tool, flat_keras: np.ndarray) -> np.ndarray:
        """One full-data HVP through the tool's own product; Keras-flat float64 in and out."""
        op, p = self.op(tool), self.p
        if tool == "pyhessian":
            _, hv = op.dataloader_hv_product(p.to_list(flat_keras))
            return p.from_list(hv)
        if tool == "curvlinops":
            return p.from_list(op @ p.to_list(flat_keras))
        if tool == "eigenthings":
            return p.from_flat_torch(op.matvec(p.to_flat_torch(flat_keras)))
        return p.from_list(self._dbp(p.to_list(flat_keras)))

    def lanczos(self, tool, steps: int, seed: int = 0):
        """``steps`` steps of the tool's own Lanczos (one draw); returns (nodes, weights)."""
        op, p = self.op(tool), self.p
        torch.manual_seed(seed)
        if tool == "pyhessian":
            nodes, weights = op.density(iter=steps, n_v=1)
            return np.asarray(nodes[0]), np.asarray(weights[0])
        if tool == "curvlinops":
            from curvlinops.papyan2020traces.spectrum import fast_lanczos
            evals, evecs = fast_lanczos(op, steps)
            return evals.cpu().numpy(), (evecs[0, :] ** 2).cpu().numpy()
        if tool == "eigenthings":
            from hessian_eigenthings import lanczos_tridiagonal
            gen = torch.Generator(device="cpu").manual_seed(seed)
            v0 = (torch.randint(0, 2, (p.dim,), generator=gen) * 2 - 1).to(torch.float32).to(p.device)
            td = lanczos_tridiagonal(op, v0, steps, reorthogonalize=True)
            m = td.alphas.shape[0]
            t = torch.diag(td.alphas) + torch.diag(td.betas[: m - 1], 1) + torch.diag(td.betas[: m - 1], -1)
            theta, y = torch.linalg.eigh(t)
            return theta.cpu().numpy(), (y[0] ** 2).cpu().numpy()
        raise ValueError(f"{tool} has no Lanczos")

    def density(self, tool, steps: int, draws: int, seed: int = 0):
        """The tool's own density function with ``steps`` Lanczos steps and ``draws`` draws.

        ``seed`` seeds torch's global generator (PyHessian's Rademacher draws) and is
        hessian-eigenthings' base seed (its draw i uses seed + i).
        Returns (nodes list, weights list) when the tool exposes them (for curvlinops, whose
        density function returns only the smoothed curve, nodes are None)."""
        op = self.op(tool)
        torch.manual_seed(seed)
        if tool == "pyhessian":
            nodes, weights = op.density(iter=steps, n_v=draws)
            return [np.asarray(n) for n in nodes], [np.asarray(w) for w in weights]
        if tool == "curvlinops":
            from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
            lanczos_approximate_spectrum(op, ncv=steps, num_repeats=draws, num_points=10_000)
            return None, None
        if tool == "eigenthings":
            from hessian_eigenthings import spectral_density
            result = spectral_density(op, num_runs=draws, lanczos_steps=steps, seed=seed)
            nodes = [r[~torch.isnan(r)].cpu().numpy() for r in result.raw_eigenvalues]
            weights = [w[: len(n)].cpu().numpy() for w, n in zip(result.raw_weights, nodes)]
            return nodes, weights
        raise ValueError(f"{tool} has no density")

    def nodes_weights(self, tool, steps: int, draws: int, seed: int = 0):
        """Quadrature nodes and weights of ``draws`` runs of the tool's Lanczos (for accuracy).

        Draw i is seeded ``seed + i`` for curvlinops and hessian-eigenthings; PyHessian draws its
        ``draws`` vectors in turn from torch's generator seeded ``seed``. Callers that repeat an
        experiment pass seeds ``draws`` or more apart."""
        if tool == "curvlinops":
            pairs = [self.lanczos(tool, steps, seed=seed + draw) for draw in range(draws)]
            return [a for a, _ in pairs], [b for _, b in pairs]
        return self.density(tool, steps, draws, seed=seed)

    def lambda_max(self, tool):
        """The largest eigenvalue by the tool's own eigensolver; (value, HVP count)."""
        op = self.op(tool)
        torch.manual_seed(0)
        if tool == "pyhessian":
            count = [0]
            original = op.dataloader_hv_product

            def counted(v):
                count[0] += 1
                return original(v)

            op.dataloader_hv_product = counted
            values, _ = op.eigenvalues(maxIter=500, tol=1e-6, top_n=1)
            op.dataloader_hv_product = original
            return float(values[0]), count[0]
        if tool == "curvlinops":
            from scipy.sparse.linalg import LinearOperator, eigsh
            count = [0]
            scipy_op = op.to_scipy()

            def matvec(v):
                count[0] += 1
                return scipy_op.matvec(v)

            value = eigsh(LinearOperator(scipy_op.shape, matvec=matvec, dtype=scipy_op.dtype), k=1, which="LA",
                          tol=1e-6, return_eigenvectors=False)
            return float(value[0]), count[0]
        if tool == "eigenthings":
            from hessian_eigenthings import lanczos
            result = lanczos(op, k=1, max_iter=60, which="LA", seed=0, reorthogonalize=True)
            return float(result.eigenvalues[0]), int(result.iterations)
        raise ValueError(tool)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def worker():
    problem, tools = None, None
    out = sys.stdout
    sys.stdout = sys.stderr  # keep the protocol channel clean of library prints
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        answer = {}
        try:
            if cmd == "setup":
                torch.set_num_threads(int(command.get("threads", os.cpu_count())))
                problem = Problem(command["spec"], command.get("device", "cpu"))
                tools = Tools(problem)
                for tool in command.get("tools", []):
                    tools.op(tool)
                answer = {"dim": problem.dim, "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
            elif cmd == "hvp":
                v = np.load(command["vector"])
                start = time.perf_counter()
                result = tools.hvp(command["tool"], v)
                _sync(problem)
                answer = {"seconds": time.perf_counter() - start}
                if command.get("save"):
                    np.save(command["save"], result)
            elif cmd == "lanczos":
                start = time.perf_counter()
                tools.lanczos(command["tool"], int(command["steps"]), int(command.get("seed", 0)))
                _sync(problem)
                answer = {"seconds": time.perf_counter() - start}
            elif cmd == "density":
                start = time.perf_counter()
                nodes, weights = tools.density(command["tool"], int(command["steps"]), int(command["draws"]))
                answer = {"seconds": time.perf_counter() - start}
                if command.get("save") and nodes is not None:
                    np.savez(command["save"], **{f"nodes{i}": n for i, n in enumerate(nodes)},
                             **{f"weights{i}": w for i, w in enumerate(weights)})
            elif cmd == "nodes_weights":
                start = time.perf_counter()
                nodes, weights = tools.nodes_weights(command["tool"], int(command["steps"]), int(command["draws"]),
                                                     int(command.get("seed", 0)))
                answer = {"seconds": time.perf_counter() - start}
                np.savez(command["save"], **{f"nodes{i}": n for i, n in enumerate(nodes)},
                         **{f"weights{i}": w for i, w in enumerate(weights)})
            elif cmd == "lambda_max":
                start = time.perf_counter()
                value, count = tools.lambda_max(command["tool"])
                answer = {"value": value, "hvps": count, "seconds": time.perf_counter() - start}
            elif cmd == "quit":
                answer = {"bye": True}
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as error:  # report, keep serving
            import traceback
            answer = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if cmd == "quit":
            return


def _sync(problem):
    if problem is not None and problem.device.type == "cuda":
        torch.cuda.synchronize()


def memjob(spec, tool, steps, device="cpu"):
    torch.set_num_threads(os.cpu_count())
    problem = Problem(spec, device)
    tools = Tools(problem)
    baseline = common.current_rss_mib()
    tools.op(tool)
    start = time.perf_counter()
    if tool == "torch_dbp":
        for _ in range(steps):
            tools.hvp(tool, np.ones(problem.dim))
    else:
        tools.lanczos(tool, steps)
    seconds = time.perf_counter() - start
    result = {"baseline_mib": baseline, "peak_mib": common.peak_rss_mib(), "seconds": seconds, "dim": problem.dim}
    if problem.device.type == "cuda":
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker()
    elif sys.argv[1] == "memjob":
        memjob(sys.argv[2], sys.argv[3], int(sys.argv[4]), *(sys.argv[5:6] or ["cpu"]))
    else:
        raise SystemExit(__doc__)
