"""The mechanics of fitting M small MLPs at once: stacked weights, batched matmuls, a per-member Adam.

M members of the same shape (FQE's main fit and its bootstrap refits) train in lockstep: layer l's weights of
all members live in one (M, in, out) tensor and a step is a few `torch.baddbmm` calls on (M, B, in) inputs, so
the per-step Python and autograd overhead is paid once, not M times, and the matmuls are larger. Each member
keeps its own data (row set), minibatch order (its own torch.Generator), initial weights and Adam moments, so
member m follows the same steps as a fit of its own; only floating-point summation order differs.
Members whose row sets differ in size run different step counts: a member that has finished its steps for an
iteration idles (zero loss weight, its Adam state and weights left untouched) until the others are done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class StackedMLP:
    """M MLPs (Linear/ReLU stacks of one shape) in one flat parameter buffer, viewed as contiguous (M, in, out)
    weights and (M, 1, out) biases (a strided batch would push `torch.bmm` off its fast path), with a
    hand-written backward pass (no autograd: at these sizes its bookkeeping costs as much as the arithmetic).

    matmul_dtype: torch.bfloat16 runs the matrix products of every layer but the last (forward and backward)
    in bfloat16 with float32 accumulation, ~2x faster on CPUs with AVX512-BF16; the weights, Adam and the
    output layer stay float32 (so Q keeps float32 precision). The hidden activations are then stored in
    bfloat16 (relative rounding ~0.4%).
    """

    def __init__(self, members: Sequence[nn.Sequential], matmul_dtype: torch.dtype = torch.float32) -> None:
        self.matmul_dtype = matmul_dtype
        linears = [[layer for layer in mlp if isinstance(layer, nn.Linear)] for mlp in members]
        self.shapes = [(layer.in_features, layer.out_features) for layer in linears[0]]
        pieces = [torch.stack([m[i].weight.detach().T for m in linears]) for i in range(len(self.shapes))]
        pieces += [torch.stack([m[i].bias.detach() for m in linears]) for i in range(len(self.shapes))]
        self.members = len(members)
        self.flat = torch.cat([p.reshape(-1) for p in pieces])  # (M * P,) parameter by parameter
        self.grad = torch.zeros_like(self.flat)  # what `gradients` last computed
        # the live weights in each layer's matmul dtype, refreshed by every `activations` call with them
        self._matmul_flat = self.flat if matmul_dtype == torch.float32 else self.flat.to(matmul_dtype)
        self._live = self._in_matmul_dtypes(self.views(self.flat), self.views(self._matmul_flat))
        self._grad_views = self.views(self.grad)
        # `flat` as one contiguous chunk per (parameter, member), member m's being chunks m, m + M, m + 2M, ...
        self.chunk_sizes = [p[0].numel() for p in pieces for _ in range(self.members)]

    def views(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(M * P,) -> per layer (M, in, out) weights and (M, 1, out) biases (contiguous views of `flat`)."""
        weights, biases, start, m = [], [], 0, self.members
        for fan_in, fan_out in self.shapes:
            weights.append(flat[start:start + m * fan_in * fan_out].view(m, fan_in, fan_out))
            start += m * fan_in * fan_out
        for _, fan_out in self.shapes:
            biases.append(flat[start:start + m * fan_out].view(m, 1, fan_out))
            start += m * fan_out
        return weights, biases

    def __call__(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        """(M, B, in) -> (M, B, out); `flat` (as from `frozen`) instead of the live weights."""
        return self.activations(x, flat)[-1]

    def activations(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """[x, relu(x W1 + b1), ..., output]: every layer's output, (M, B, width) each, in the dtype of the
        layer that reads it."""
        if flat is None:
            if self._matmul_flat is not self.flat:
                self._matmul_flat.copy_(self.flat)
            weights, biases = self._live
        else:
            low = flat if self.matmul_dtype == torch.float32 else flat.to(self.matmul_dtype)
            weights, biases = self._in_matmul_dtypes(self.views(flat), self.views(low))
        x = x.to(weights[0].dtype)
        outputs, last = [x], len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if w.shape[2] == 1:  # one output: a batched matrix-vector product is slower than this
                x = (x * w.transpose(1, 2)).sum(dim=2, keepdim=True).add_(b)
            else:
                x = torch.baddbmm(b, x, w)
            if i < last:  # cast first: ReLU is exact in either dtype and ~3x faster in float32
                x = torch.relu_(x.to(weights[i + 1].dtype))
            outputs.append(x)
        return outputs

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the first layer multiplies its inputs in (inputs given in it are not cast)."""
        return self._live[0][0].dtype

    def _in_matmul_dtypes(self, exact, low) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer the weights and bias from `low` (`views` of the parameters in `matmul_dtype`) or, for
        the float32 output layer, from `exact` (`views` in float32)."""
        last = len(self.shapes) - 1
        return low[0][:last] + exact[0][last:], low[1][:last] + exact[1][last:]

    def gradients(self, activations: list[torch.Tensor], d_output: torch.Tensor) -> torch.Tensor:
        """`grad` (M * P,) := d loss / d `flat` by backpropagating d loss / d output (M, B, out) through
        `activations` (the last `activations` call's, with the live weights)."""
        weights, d_weights, d_biases = self._live[0], *self._grad_views
        delta = d_output  # (M, B, out) d loss / d layer output (pre-activation)
        for i in range(len(weights) - 1, -1, -1):
            inputs, w = activations[i], weights[i]  # (M, B, in), (M, in, out); inputs in w's dtype
            d_biases[i].copy_(delta.sum(dim=1, keepdim=True))  # bfloat16: rounded like the weight gradient
            delta = delta.to(w.dtype)
            if w.shape[2] == 1:  # (M, 1, B) x (M, B, in) into the (M, in, 1) weights' (M, 1, in) transpose
                torch.bmm(delta.transpose(1, 2), inputs, out=d_weights[i].transpose(1, 2))
            else:
                d_weights[i].copy_(torch.bmm(inputs.transpose(1, 2), delta))  # (M, in, out), cast to float32
            if i > 0:  # through the layer, then its input's ReLU (inputs > 0 where the ReLU passed); a bool
                # mask multiply is 10x slower than threshold_backward
                through = delta * w.transpose(1, 2) if w.shape[2] == 1 else torch.bmm(delta, w.transpose(1, 2))
                delta = torch.ops.aten.threshold_backward(through, inputs, 0)
        return self.grad

    def frozen(self) -> torch.Tensor:
        """A copy of the weights (FQE's target network)."""
        return self.flat.clone()

    def write_back(self, members: Sequence[nn.Sequential]) -> None:
        """Copy member m's trained weights into `members[m]` (the networks they came from)."""
        weights, biases = self.views(self.flat)
        with torch.no_grad():
            for m, mlp in enumerate(members):
                linears = [layer for layer in mlp if isinstance(layer, nn.Linear)]
                for layer, w, b in zip(linears, weights, biases, strict=True):
                    layer.weight.copy_(w[m].T)
                    layer.bias.copy_(b[m, 0])


class StackedAdam:
    """Adam (torch.optim.Adam's update, defaults betas (0.9, 0.999), eps 1e-8) on a `StackedMLP`'s flat
    parameters with a step count per member; `step(active)` applies `mlp.grad` to the active members only (the
    others keep weights and moments).

    One call of the fused kernel behind ``torch.optim.Adam(fused=True)`` per step, over the (parameter, member)
    chunks of the flat buffers, each chunk with its member's step count (4x faster than eight elementwise ops
    over the buffers; ``torch.optim.Adam`` itself over the chunks costs more in Python than it saves).
    """

    def __init__(self, mlp: StackedMLP, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps, self.members = lr, betas, eps, mlp.members
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(mlp.flat), torch.zeros_like(mlp.flat)
        self.counts = torch.zeros(mlp.members)  # member m's step count (float32, as the fused kernel wants)
        self.chunks = [t.split(mlp.chunk_sizes) for t in (mlp.flat, mlp.grad, self.exp_avg, self.exp_avg_sq)]
        self.chunks.append([self.counts[k % self.members] for k in range(len(mlp.chunk_sizes))])  # views

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One update of the members `active` (M,) bool (None: every member) with `mlp.grad`."""
        if active is None:
            self.counts += 1
            chunks = self.chunks
        else:
            self.counts += active
            chunks = [[c[k] for k in range(len(c)) if active[k % self.members]] for c in self.chunks]
        params, grads, exp_avg, exp_avg_sq, steps = chunks
        torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, lr=self.lr, beta1=self.betas[0],
                           beta2=self.betas[1], weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)


def epoch_schedule(row_sets: Sequence[torch.Tensor], generators: Sequence[torch.Generator], epochs: int,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minibatches of `epochs` passes for every member, in lockstep.

    Member m draws `torch.randperm(len(rows_m))` per epoch from its own generator and splits it into batches of
    `batch_size` (the last one short), as a fit of its own would. Returns (S, M, B) base-row indices (padding:
    row 0), (S, M, B) float weights (1 real, 0 padding) and (S, M) bool "member has a batch at this step".
    """
    members = []
    for rows, generator in zip(row_sets, generators, strict=True):
        n, per_epoch = len(rows), math.ceil(len(rows) / batch_size)
        passes = []
        for _ in range(epochs):
            padded = torch.full((per_epoch * batch_size,), -1, dtype=torch.int64)
            padded[:n] = torch.randperm(n, generator=generator)
            passes.append(padded.view(per_epoch, batch_size))
        members.append(torch.cat(passes))  # (S_m, B) positions in the member's rows, -1 padding
    steps = max(len(p) for p in members)
    positions = torch.full((steps, len(members), batch_size), -1, dtype=torch.int64)
    for m, p in enumerate(members):
        positions[:len(p), m] = p
    valid = positions >= 0  # (S, M, B)
    index = torch.zeros_like(positions)
    for m, rows in enumerate(row_sets):
        index[:, m] = torch.where(valid[:, m], rows[positions[:, m].clamp(min=0)], 0)
    return index, valid.float(), valid.any(dim=2)
