"""The engine on a CUDA GPU (every test is marked `cuda`: tests/conftest.py skips
them where torch sees no GPU; bench/gpu_check.sh runs them on a GPU machine).

- placement: the model, the data, the optimizer's state and the checkpoint's RNG
  state live on the GPU, alone and packed;
- packed trials (trainables/packed.py) train through engine.fit on the GPU and match
  their unpacked runs within PACKED_TOL;
- a run resumes from its checkpoint on the GPU (dropout's CUDA RNG included);
- the device options (bf16, channels_last, cuda_eval_batch_size) run on the GPU.

Comparisons run in float32 proper: TF32 off for matmuls and convolutions, and
deterministic cuDNN algorithms, so differences are float32 rounding of different
kernels (batched GEMMs and grouped convolutions for a pack), not TF32's 10-bit
mantissa or atomics. No Ray here: this file runs where Ray is not installed."""

from __future__ import annotations

import pytest
import torch

from test_engine_gpu_options import BF16_TOL, CNN, COMPARED, MLP, build, configs
from test_engine_gpu_options import train as train_models
from trainables import data as D
from trainables.checkpoint import load_state, save_state
from trainables.engine import EngineConfig, SingleModel, fit
from trainables.packed import PackedModels

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
# Packed vs unpacked on the GPU: float32 rounding of different kernels, amplified
# over a few steps. The CPU bound (tests/test_packed.py) is 1e-5; cuBLAS and cuDNN
# pick kernels by shape, so a pack's batched ones sum in other orders. Not yet
# measured on a GPU: bench/gpu_check.sh's log says whether it holds.
PACKED_TOL = 1e-4


@pytest.fixture(autouse=True)
def float32_proper():
    # set and restored by hand: torch's backend flags are properties that pytest's
    # monkeypatch does not find (torch 2.14)
    flags = [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False),
             (torch.backends.cudnn, "deterministic", True), (torch.backends.cudnn, "benchmark", False)]
    before = [getattr(module, name) for module, name, _ in flags]
    for module, name, value in flags:
        setattr(module, name, value)
    yield
    for (module, name, _), value in zip(flags, before):
        setattr(module, name, value)


def on_gpu(split: D.Split) -> D.Split:
    """The split with its images, labels and rows on the GPU (as classifier.make_splits
    builds it for a trial with a GPU)."""
    return D.Split(split.x.to(CUDA), split.y.to(CUDA), split.idx.to(CUDA), split.mean, split.std)


@pytest.fixture(scope="module")
def splits(make_splits):
    return tuple(on_gpu(s) for s in make_splits(256, 256))


def gpu_train(splits, spec, cfgs: list[EngineConfig], packed: bool) -> list[list[dict]]:
    """Every evaluation's metric row per model, trained on the GPU: packed, or alone."""
    return train_models(splits, spec, cfgs, packed, device=CUDA)


def tensors(value) -> list[torch.Tensor]:
    """Every tensor inside nested dicts and lists (an optimizer's or a checkpoint's state)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    return []


def test_the_model_the_data_and_the_optimizer_state_live_on_the_gpu(splits):
    train, test = splits
    states: list[dict] = []
    single = SingleModel(build(CNN, 0).to(CUDA))
    fit(single, train, {"test": test}, EngineConfig(lr=0.01, batch_size=32, epochs=1), lambda m, s: states.append(s))
    assert {t.device.type for t in [*single.model.parameters(), *single.model.buffers()]} == {"cuda"}
    assert {t.device.type for t in tensors(single.optimizer.state_dict()["state"])} == {"cuda"}  # momentum buffers
    assert single.perm.device.type == "cuda" and train.x.device.type == "cuda"
    assert "cuda" in states[-1]["rng"]  # the checkpoint keeps dropout's CUDA generator

    packed = PackedModels([build(CNN, s).to(CUDA) for s in (0, 1)])
    cfgs = [EngineConfig(optimizer="adam", lr=1e-3, batch_size=32, epochs=1, seed=s) for s in (0, 1)]
    fit(packed, train, {"test": test}, cfgs, lambda r, s: None, names=["a", "b"])
    assert {t.device.type for t in [*packed.params.values(), *packed.buffers.values()]} == {"cuda"}
    assert {t.device.type for t in tensors(packed.optimizer.state)} == {"cuda"}  # Adam's moments
    assert packed.perms.device.type == "cuda"


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_packed_trials_train_on_the_gpu(splits, spec):
    cfgs = [EngineConfig(optimizer="sgd", batch_size=32, epochs=3, seed=s, lr=lr, weight_decay=wd, momentum=m)
            for s, lr, wd, m in [(0, 0.02, 0.0, 0.9), (1, 0.05, 1e-3, 0.5), (2, 0.1, 1e-4, 0.0)]]
    for rows in gpu_train(splits, spec, cfgs, packed=True):
        assert [r["status"] for r in rows] == ["running", "running", "ok"]
        assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]


@pytest.mark.parametrize("spec,optimizer,steps", [(MLP, "sgd", None), (MLP, "adam", None), (CNN, "sgd", 3)],
                         ids=["mlp-sgd", "mlp-adam", "cnn-sgd"])
def test_packed_models_match_their_unpacked_runs_on_the_gpu(splits, spec, optimizer, steps):
    scale = 0.1 if optimizer == "adam" else 1.0  # Adam's steps are larger
    # the BN CNN: a few steps, as on CPU (its training amplifies rounding)
    cfgs = [c.model_copy(update={"optimizer": optimizer, "lr": c.lr * scale, "max_steps": steps, "epochs": 2})
            for c in configs()]
    alone, packed = gpu_train(splits, spec, cfgs, packed=False), gpu_train(splits, spec, cfgs, packed=True)
    for want, got in zip(alone, packed):
        assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
        for w, g in zip(want, got):
            for key in COMPARED:
                tol = 10 * PACKED_TOL if key == "grad_norm" else PACKED_TOL  # see test_engine_gpu_options
                assert g[key] == pytest.approx(w[key], rel=tol, abs=tol), (w["epoch"], key)


def test_a_run_resumes_from_its_checkpoint_on_the_gpu(splits, tmp_path):
    train, test = splits
    spec = ("mlp", {"hidden": [64], "dropout": 0.2})  # dropout draws from the CUDA generator
    cfg = EngineConfig(optimizer="adam", lr=1e-3, batch_size=32, epochs=3)
    straight: list[dict] = []

    def on_epoch(metrics: dict, state: dict) -> None:
        straight.append(metrics)
        if metrics["epoch"] == 1:  # as a trial checkpoints (the state holds the live tensors)
            save_state(tmp_path, state)

    fit(build(spec, 0).to(CUDA), train, {"test": test}, cfg, on_epoch)
    resumed: list[dict] = []
    fit(build(spec, 0).to(CUDA), train, {"test": test}, cfg, lambda m, s: resumed.append(m),
        resume=load_state(tmp_path))  # read back on CPU, as a trial does
    assert [r["epoch"] for r in resumed] == [2, 3]
    for before, after in zip(straight[1:], resumed):
        for key in COMPARED:
            assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
def test_bf16_channels_last_and_large_evaluation_batches_run_on_the_gpu(splits, packed):
    fast = {"precision": "bf16", "channels_last": True, "cuda_eval_batch_size": 4096}
    fp32 = gpu_train(splits, CNN, configs(), packed)
    bf16 = gpu_train(splits, CNN, configs(**fast), packed)
    tol = BF16_TOL["cnn_overparam"]
    for full, half in zip(fp32, bf16):
        assert [r["status"] for r in half] == ["running", "running", "ok"]
        assert half[-1]["train_loss"] < 0.6 * half[0]["train_loss"]
        assert half[-1]["test_loss"] == pytest.approx(full[-1]["test_loss"], rel=tol["loss"])
        assert half[-1]["test_acc"] == pytest.approx(full[-1]["test_acc"], abs=tol["acc"])


@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
def test_the_evaluation_batch_does_not_change_the_metrics_on_the_gpu(splits, packed):
    cfgs = [c.model_copy(update={"max_steps": 4}) for c in configs()]
    small = gpu_train(splits, CNN, cfgs, packed)
    large = gpu_train(splits, CNN, [c.model_copy(update={"cuda_eval_batch_size": 4096}) for c in cfgs], packed)
    for want, got in zip(small, large):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"):
            assert got[-1][key] == pytest.approx(want[-1][key], rel=1e-5, abs=1e-5), key
