"""Packed trials: K models of one architecture stepped together by `engine.fit`.

Small MLPs and CNNs leave a GPU (and a CPU core's vector units) mostly idle, and every
Ray trial pays a process, its imports and its data. A spec's `pack: K` trains up to K
grid cells that differ only in `PER_MODEL_KEYS` (seed, lr, weight_decay, momentum) as
one trial: their weights are stacked (`torch.func.stack_module_state`), one
`torch.func.vmap` of `torch.func.grad_and_value` runs all K models, forward and
backward, on their own minibatches (batched matmuls / grouped convolutions). vmap-ing
the per-model gradient (rather than back-propagating the sum of the K losses) yields
each weight gradient in the weight's own layout: on CPU the summed-loss backward
spent as long transposing [K, out, in] gradients as multiplying.

Each model keeps what makes it its own run:
- initialization: built after `torch.manual_seed(seed)`, exactly as an unpacked trial;
- data order: its own permutation generator seeded with its seed, as in `engine.fit`;
- hyperparameters: lr, weight decay and momentum are per-model tensors in the
  optimizer below, which mirrors torch's SGD (heavy ball) and Adam update for update;
- divergence: a model whose loss goes non-finite is reported diverged and the others
  go on (independent slices: a NaN in one never reaches another's gradient).

Packed and unpacked runs of a cell agree to float32 rounding (tests/test_packed.py:
within 1e-5 after several epochs) except for
- dropout: vmap draws each model's masks from one shared generator
  (`randomness="different"`), so masks differ from an unpacked run's; statistically
  the same, not bitwise;
- nothing else: BatchNorm's running statistics are stacked buffers that vmap updates
  per model, in place, exactly as each model alone would.

The engine's device options apply per model: `precision="bf16"` autocasts each
model's forward pass, `channels_last` lays out every model's convolution weights
(and input batches) as channels_last (`per_model_channels_last`), and
`cuda_eval_batch_size` sets the evaluation batch on a CUDA device.

`PackedModels` is the engine's `ModelSet` for K models: `engine.fit` runs the one
training loop (epochs, batches, evaluation cadence, divergence, probes, checkpoints,
reports), and reports one metric row per model under `members` (the contract's
MEMBERS_KEY; analysis expands them into one row per cell).

    >>> fit(PackedModels(modules), train, {"test": test}, cfgs, on_report, names=cell_ids)
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn import functional as F

from trainables.contract import Evaluation
from trainables.data import Split
from trainables.engine import CRITERIA, EngineConfig, ModelSet, autocast, in_layout, rng_state, set_rng_state

# Hyperparameters that may differ between the models of one pack (per-model tensors
# or generators); every other config key must be equal (sweeps/packing.py groups by it).
PER_MODEL_KEYS = ("seed", "lr", "weight_decay", "momentum")

# Adam's constants (torch's defaults, which unpacked trials use too).
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class PackedModels(ModelSet):
    """K modules of one architecture as stacked parameters [K, ...] and buffers, a
    vmap-ed forward and gradient over them, and a per-model optimizer."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if len({tuple((n, tuple(p.shape)) for n, p in m.state_dict().items()) for m in models}) != 1:
            raise ValueError("packed models must share one architecture (same parameter names and shapes)")
        self.k = len(models)
        self.params, self.buffers = stack_module_state(list(models))
        for p in self.params.values():
            p.requires_grad_(False)  # gradients come from torch.func, not autograd's .grad
        self._template = copy.deepcopy(models[0])  # rebuilt members start from this
        self._skeleton = copy.deepcopy(models[0]).to("meta")  # structure only: weights come from `params`
        self._criterion = F.cross_entropy
        self._precision, self._channels_last = "fp32", False
        self._bn_hooks: list | None = None  # bf16: BatchNorm's inputs cast to float32 (see prepare)
        self._build_steps(self._loss)

    # -- the engine's ModelSet --------------------------------------------------

    def _build_steps(self, objective) -> None:
        per_model_grad = grad_and_value(objective, has_aux=True)
        self._grad = vmap(per_model_grad, randomness="different")
        self._grad_unpenalized = vmap(per_model_grad, in_dims=(0, 0, 0, 0, None), randomness="different")

    def prepare(self, cfgs: Sequence[EngineConfig], device: torch.device) -> None:
        check_packable(cfgs)
        self.cfgs, self.device = list(cfgs), device
        self._criterion = CRITERIA[cfgs[0].criterion]
        self._build_steps(self._grad_norm_sq if cfgs[0].objective == "grad_norm_sq" else self._loss)
        self._precision = cfgs[0].precision
        if self._precision == "bf16" and self._bn_hooks is None:
            # BatchNorm on a bf16 input with float32 weights fails under torch.func.grad
            # ("expected scalar type BFloat16 but found Float", torch 2.14 on CPU), so
            # a pack's BatchNorm runs in float32 (an unpacked bf16 model's on its bf16
            # input: the two round differently).
            self._bn_hooks = [m.register_forward_pre_hook(_in_float32) for m in self._skeleton.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # stacked convolution weights are 5-D: [K, out, in, kh, kw]
        self._channels_last = cfgs[0].channels_last and any(p.dim() == 5 for p in self.params.values())
        if self._channels_last:  # before the optimizer: its state takes the weights' layout
            for name, p in self.params.items():
                if p.dim() == 5:
                    self.params[name] = per_model_channels_last(p)
        self.optimizer = PackedOptimizer(self.params, cfgs)
        self.order_rngs = [torch.Generator().manual_seed(c.seed) for c in cfgs]  # each model's data order
        cfg = cfgs[0]
        self.penalty = None
        if cfg.l2_mode == "penalty" and any(c.weight_decay > 0 for c in cfgs):
            self.penalty = torch.tensor([c.weight_decay for c in cfgs], device=device)

    def shuffle(self, train: Split) -> None:
        device = train.idx.device
        self.perms = torch.stack([train.idx[torch.randperm(len(train), generator=g).to(device)] for g in self.order_rngs])

    def gradients(self, train: Split, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.perms[:, start:stop]  # [K, B]: each model's own batch
        inputs = self._layout(train.inputs(rows.reshape(-1)).unflatten(0, rows.shape))
        self.grads, (objective, losses) = self.train_step(inputs, train.labels(rows), self.penalty)  # [K] each
        if self.cfgs[0].objective == "grad_norm_sq":
            return losses.detach(), objective.detach().sqrt()  # the loss gradient's norm, as SingleModel
        grad_norms = torch.linalg.vector_norm(  # [K]: each model's gradient norm
            torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in self.grads.values()]), dim=0)
        return losses.detach(), grad_norms

    def update(self) -> None:
        self.optimizer.step(self.grads)

    def freeze(self, i: int) -> None:
        self.optimizer.freeze(i)

    def evaluate(self, split: Split, batch_size: int) -> list[Evaluation]:
        batch_size = self.cfgs[0].eval_batch_for(split.x.device, batch_size)
        if self.cfgs[0].criterion == "mse":
            return evaluate_packed_mse(self, split, batch_size)
        return evaluate_packed(self, split, batch_size)

    def weight_norms(self) -> list[float]:
        """L2 norm of each model's parameters (as engine.weight_norm per model)."""
        with torch.no_grad():
            return torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.flatten(1), dim=1) for p in self.params.values()]),
                dim=0).tolist()

    def module(self, i: int) -> nn.Module:
        """Model i as an ordinary module (a copy), e.g. for probes."""
        module = copy.deepcopy(self._template)
        module.load_state_dict(member_state(self.weights(), i))
        return module


    def state_dict(self) -> dict:
        return {"models": self.weights(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(self.order_rngs, self.device)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["models"]["params"].items():
                self.params[name].copy_(value)
            for name, value in state["models"]["buffers"].items():
                self.buffers[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(self.order_rngs, state["rng"], self.device)  # the global (dropout) RNG too

    # -- the vectorized model ---------------------------------------------------

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self._precision):
            out = functional_call(self._skeleton, (params, buffers), (x,))
        return out.float()  # float32 losses and logits (a no-op at fp32)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Input batches in channels_last layout when the option applies: [B, C, H, W]
        shared by all models, or [K, B, C, H, W], one batch per model."""
        if not self._channels_last:
            return x
        return per_model_channels_last(x) if x.dim() == 5 else in_layout(x, True)

    def _loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, l2: torch.Tensor | None):
        """One model's minibatch loss (plus l2 * ||w||^2, the "penalty" L2, if given)
        to differentiate, and the loss alone."""
        loss = self._criterion(self._call(params, buffers, x), y)
        if l2 is None:
            return loss, loss
        return loss + l2 * sum(p.square().sum() for p in params.values()), loss

    def _grad_norm_sq(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, l2: torch.Tensor | None):
        """objective "grad_norm_sq": ||grad of the loss||^2 to differentiate (double
        backward, as engine.SingleModel), and the loss. The gradient norm the engine
        reports is its square root."""
        grads, loss = grad_and_value(self._loss, has_aux=True)(params, buffers, x, y, l2)
        return sum(g.square().sum() for g in grads.values()), loss[1]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, l2: torch.Tensor | None) -> tuple[dict, tuple]:
        """Gradients {name: [K, ...]} of every model's objective on its own batch
        (x [K, B, ...], y [K, B, ...]) and (objective [K], loss [K]); `l2` [K]: each
        model's penalty strength, or None."""
        self._skeleton.train(True)
        grad = self._grad if l2 is not None else self._grad_unpenalized
        grads, (objective, losses) = grad(self.params, self.buffers, x, y, l2)
        return grads, (objective, losses)

    def forward(self, x: torch.Tensor, *, training: bool, shared_input: bool = False) -> torch.Tensor:
        """Outputs [K, B, ...]: x is [K, B, ...] (a batch per model) or, with
        `shared_input`, [B, ...] (one batch for all, e.g. evaluation)."""
        self._skeleton.train(training)
        batched = vmap(self._call, in_dims=(0, 0, None if shared_input else 0), randomness="different")
        return batched(self.params, self.buffers, self._layout(x))

    def weights(self) -> dict:
        """The stacked weights as a checkpoint's "models" entry (`member_state` reads one model's)."""
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "buffers": {n: b.clone() for n, b in self.buffers.items()}}


def _in_float32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() for a in args)


def per_model_channels_last(stacked: torch.Tensor) -> torch.Tensor:
    """A stacked 5-D tensor, one NCHW-ordered slice per model (conv weights [K, out,
    in, kh, kw], input batches [K, B, C, H, W]), laid out so that every slice is
    channels_last: memory order K, N, H, W, C (torch's channels_last_3d orders a
    5-D tensor's dims otherwise)."""
    return stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def member_state(models_state: dict, k: int) -> dict:
    """Model k's state_dict from a packed checkpoint's "models" entry (as
    `PackedModels.state_dict` wrote it): what the model alone would have saved."""
    return {name: t[k] for part in ("params", "buffers") for name, t in models_state[part].items()}


def _per_model(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _expand(per_model: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] -> [K, 1, 1, ...] broadcastable against a stacked tensor `like`."""
    return per_model.view(-1, *([1] * (like.dim() - 1)))


class PackedOptimizer:
    """torch's SGD (momentum, no dampening) or Adam, with lr, weight decay and
    momentum as per-model tensors. The arithmetic follows torch's single-tensor
    implementations step for step, so a model trains as it would alone (to rounding)."""

    def __init__(self, params: Mapping[str, torch.Tensor], cfgs: Sequence[EngineConfig]) -> None:
        like = next(iter(params.values()))
        self.params = params
        self.kind = cfgs[0].optimizer
        self.lr = _per_model([c.lr for c in cfgs], like)
        self.momentum = _per_model([c.momentum for c in cfgs], like)
        decay = [c.weight_decay if c.l2_mode == "optimizer" else 0.0 for c in cfgs]
        self.decay = _per_model(decay, like) if any(decay) else None
        self.steps = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def freeze(self, i: int) -> None:
        """Model i's steps are 0 from now on (lr 0: its weights stay as they are)."""
        self.lr[i] = 0.0

    @torch.no_grad()
    def step(self, grads: Mapping[str, torch.Tensor]) -> None:
        # In-place ops with the per-model factors broadcast ([K, 1, ...]): the update
        # is memory-bound on CPU, so no temporaries the size of the weights.
        self.steps += 1
        for name, p in self.params.items():
            grad = grads[name]
            if self.decay is not None:
                grad = grad.addcmul(p, _expand(self.decay, p))
            state = self.state.setdefault(name, {})
            if self.kind == "sgd":
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()  # torch: the first buffer is the gradient
                else:
                    state["momentum_buffer"].mul_(_expand(self.momentum, p)).add_(grad)
                p.addcmul_(state["momentum_buffer"], _expand(self.lr, p), value=-1.0)
                continue
            beta1, beta2 = _ADAM_BETAS
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** self.steps)
            # torch: p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps); here the step size
            # divides the denominator instead (same value, one temporary fewer).
            denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2 ** self.steps)).add_(_ADAM_EPS)
            p.addcdiv_(exp_avg, denom.div_(_expand(step_size, p)), value=-1.0)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "state": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        like = next(iter(self.params.values()))
        self.steps = state["steps"]
        self.state = {n: {k: v.to(like.device) for k, v in s.items()} for n, s in state["state"].items()}


@torch.no_grad()
def evaluate_packed(packed: PackedModels, split: Split, batch_size: int, num_classes: int | None = None) -> list[Evaluation]:
    """engine.evaluate_split for every model of the pack at once (eval mode), on the
    same batches: one Evaluation per model (`num_classes`: the logits' width unless given)."""
    device = split.x.device
    loss_sum = torch.zeros(packed.k, device=device)
    correct = count = None
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        labels = split.labels(rows)
        logits = packed.forward(split.inputs(rows), training=False, shared_input=True)  # [K, B, C]
        if correct is None:
            num_classes = num_classes or logits.shape[2]
            correct = torch.zeros(packed.k, num_classes, device=device, dtype=torch.long)
            count = torch.zeros(num_classes, device=device, dtype=torch.long)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(packed.k), reduction="none")
        loss_sum += losses.view(packed.k, -1).sum(1)
        hits = (logits.argmax(2) == labels).long()  # [K, B]
        correct.index_add_(1, labels, hits)
        count += torch.bincount(labels, minlength=num_classes)
    n = len(split)
    per_class = (correct.double() / count.double()).tolist()  # 0/0 -> NaN for absent classes
    return [Evaluation(float(loss_sum[k]) / n, int(correct[k].sum()) / n, per_class[k]) for k in range(packed.k)]


@torch.no_grad()
def evaluate_packed_mse(packed: PackedModels, split: Split, batch_size: int) -> list[Evaluation]:
    """engine.evaluate_split(criterion="mse") for every model of the pack: the mean
    squared error over the split (summed in float64), no accuracies."""
    sq_sum = torch.zeros(packed.k, device=split.x.device, dtype=torch.float64)
    count = 0
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        targets = split.labels(rows)
        outputs = packed.forward(split.inputs(rows), training=False, shared_input=True)  # [K, B, ...]
        sq_sum += (outputs - targets).square().flatten(1).sum(1).double()
        count += targets.numel()
    return [Evaluation(float(sq_sum[i]) / count, float("nan"), []) for i in range(packed.k)]


def check_packable(cfgs: Sequence[EngineConfig]) -> None:
    """Raise ValueError unless the configs differ only in PER_MODEL_KEYS and use
    what the packed trainer supports."""
    shared = [c.model_dump(exclude=set(PER_MODEL_KEYS)) for c in cfgs]
    if any(s != shared[0] for s in shared):
        # over every config's keys: a dump leaves out device options at their defaults
        differing = sorted(k for k in set().union(*shared) if any(s.get(k) != shared[0].get(k) for s in shared))
        raise ValueError(f"packed configs may differ only in {', '.join(PER_MODEL_KEYS)}; they differ in {differing}")
