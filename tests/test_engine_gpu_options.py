"""The engine's device options (trainables/engine.py: `precision`, `channels_last`,
`cuda_eval_batch_size`) on CPU, alone and packed: bf16 trains and stays close to
float32, channels_last gives the float32 metrics of the default layout, the
evaluation batch does not change the metrics, bad values are refused naming the key,
and at their defaults the options leave resolved configs (and so cell ids) as they
were. tests/test_cuda.py runs the same options on a GPU.

No Ray here (the GPU check runs this file where Ray is not installed): the two
classifier tests skip without it, as trainables.classifier imports trainables.trial."""

from __future__ import annotations

import pytest
import torch

from trainables.engine import EngineConfig, evaluate_split, fit
from trainables.errors import ConfigError
from trainables.families import validate_model
from trainables.models import build_model
from trainables.packed import PackedModels, check_packable

MLP = ("mlp", {"hidden": [32]})
CNN = ("cnn_overparam", {"width": 0.125, "head": 16})  # conv + BatchNorm + a linear head
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "grad_norm", "running_loss")
NEW_KEYS = ("precision", "channels_last", "cuda_eval_batch_size")
# bf16 against float32 after 3 epochs at lr 0.01 (256 images): measured on CPU with
# torch 2.14, MLP losses within 0.03% and accuracies within 1 test image; the BN CNN
# within 3% and 9 test images (0.035). That CNN's training amplifies rounding: its
# float32 test accuracy moves by up to 0.039 with channels_last or 2 threads instead
# of 1. Tolerances with margin:
BF16_TOL = {"mlp": {"loss": 0.01, "acc": 0.01}, "cnn_overparam": {"loss": 0.10, "acc": 0.06}}


@pytest.fixture(scope="module")
def splits(make_splits):
    return make_splits(256, 256)


def build(spec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # initialization, as classifier.train does
    return build_model(spec[0], **spec[1])


def train(splits, spec, cfgs: list[EngineConfig], packed: bool, device: str = "cpu") -> list[list[dict]]:
    """Every evaluation's metric row, per model: K models packed, or each alone (the
    splits already on `device`)."""
    train_split, test = splits
    if not packed:
        rows = []
        for cfg in cfgs:
            rows.append([])
            fit(build(spec, cfg.seed).to(device), train_split, {"test": test}, cfg,
                lambda m, s, out=rows[-1]: out.append(m))
        return rows
    reports: list[dict] = []
    names = [f"m{i}" for i in range(len(cfgs))]
    fit(PackedModels([build(spec, c.seed).to(device) for c in cfgs]), train_split, {"test": test}, cfgs,
        lambda r, s: reports.append(r), names=names)
    return [[r["members"][n] for r in reports if n in r["members"]] for n in names]


def configs(**options) -> list[EngineConfig]:
    return [EngineConfig(optimizer="sgd", lr=0.01, batch_size=32, epochs=3, seed=s, weight_decay=wd, **options)
            for s, wd in [(0, 0.0), (1, 1e-3)]]


@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_bf16_trains_and_stays_close_to_float32(splits, spec, packed):
    fp32 = train(splits, spec, configs(), packed)
    bf16 = train(splits, spec, configs(precision="bf16"), packed)
    tol = BF16_TOL[spec[0]]
    for full, half in zip(fp32, bf16):
        assert [r["status"] for r in half] == ["running", "running", "ok"]
        assert half[-1]["train_loss"] < 0.6 * half[0]["train_loss"]  # the loss falls
        assert half[-1]["train_loss"] != full[-1]["train_loss"]  # bf16 is on: it rounds differently
        for key in ("train_loss", "test_loss"):
            assert half[-1][key] == pytest.approx(full[-1][key], rel=tol["loss"]), key
        for key in ("train_acc", "test_acc"):
            assert half[-1][key] == pytest.approx(full[-1][key], abs=tol["acc"]), key


def test_bf16_computes_the_forward_pass_in_bfloat16_and_keeps_float32_weights(splits):
    model, seen = build(CNN, 0), set()
    model[0].register_forward_hook(lambda module, args, out: seen.add(out.dtype))  # the first conv
    train_split, test = splits
    fit(model, train_split, {"test": test}, EngineConfig(lr=0.01, batch_size=32, epochs=1, precision="bf16"),
        lambda m, s: None)
    assert seen == {torch.bfloat16}  # training and evaluation
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("packed", [False, True], ids=["alone", "packed"])
def test_channels_last_gives_the_metrics_of_the_default_layout(splits, packed):
    # A few steps at a moderate lr, as test_packed's BatchNorm test: over many steps
    # this CNN amplifies float32 rounding (which the layout changes) to ~1e-3. Its
    # gradient norm reacts most: the first step's differs by 2.5e-6 (relative), the
    # second's by up to 2.5e-4 once the weights differ by rounding (measured on CPU).
    cfgs = [c.model_copy(update={"max_steps": 3}) for c in configs()]
    default = train(splits, CNN, cfgs, packed)
    nhwc = train(splits, CNN, [c.model_copy(update={"channels_last": True}) for c in cfgs], packed)
    for want, got in zip(default, nhwc):
        assert len(got) == len(want) == 1
        for key in COMPARED:
            tol = 1e-3 if key == "grad_norm" else 1e-5
            assert got[0][key] == pytest.approx(want[0][key], rel=tol, abs=tol), key


def test_channels_last_lays_out_the_conv_weights_and_is_nothing_for_an_mlp(splits):
    train_split, test = splits
    cfg = EngineConfig(lr=0.01, batch_size=32, max_steps=2, channels_last=True)
    cnn = build(CNN, 0)
    fit(cnn, train_split, {"test": test}, cfg, lambda m, s: None)
    conv = cnn[4].weight  # the second conv, 8 -> 16 channels (for 1 input channel both layouts are one)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    packed = PackedModels([build(CNN, 0), build(CNN, 1)])
    fit(packed, train_split, {"test": test}, [cfg, cfg.model_copy(update={"seed": 1})], lambda r, s: None,
        names=["a", "b"])
    assert packed.params["4.weight"][1].is_contiguous(memory_format=torch.channels_last)
    plain, nhwc = [], []
    for rows, options in ((plain, {}), (nhwc, {"channels_last": True})):
        fit(build(MLP, 0), train_split, {"test": test}, EngineConfig(lr=0.01, batch_size=32, epochs=2, **options),
            lambda m, s, out=rows: out.append(m))
    assert [{k: r[k] for k in COMPARED} for r in nhwc] == [{k: r[k] for k in COMPARED} for r in plain]  # bitwise


def test_the_evaluation_batch_does_not_change_the_metrics(splits):
    train_split, test = splits
    model = build(CNN, 0)
    fit(model, train_split, {}, EngineConfig(lr=0.01, batch_size=32, max_steps=4), lambda m, s: None)
    results = [evaluate_split(model, test, batch) for batch in (7, 256, 4096)]
    for other in results[1:]:
        assert other.loss == pytest.approx(results[0].loss, rel=1e-6, abs=1e-6)
        assert other.acc == results[0].acc
        assert other.per_class_acc == pytest.approx(results[0].per_class_acc, abs=1e-6)
    # cuda_eval_batch_size is for CUDA devices: on CPU eval_batch_size still applies
    cfg = EngineConfig(cuda_eval_batch_size=4096)
    assert cfg.eval_batch_for(torch.device("cpu"), 256) == 256
    assert cfg.eval_batch_for(torch.device("cuda"), 256) == 4096
    assert EngineConfig().eval_batch_for(torch.device("cuda"), 256) == 256
    default = train(splits, MLP, configs(), packed=True)
    bigger = train(splits, MLP, configs(cuda_eval_batch_size=4096, eval_batch_size=64), packed=True)
    for want, got in zip(default, bigger):
        for key in COMPARED:
            assert got[-1][key] == pytest.approx(want[-1][key], rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("key,value", [("precision", "fp16"), ("precision", "bf32"), ("channels_last", "sometimes"),
                                       ("cuda_eval_batch_size", 0), ("cuda_eval_batch_size", "auto"),
                                       ("cuda_eval_batch_size", True)])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as caught:
        validate_model(EngineConfig, {key: value})
    assert caught.value.key == key


def test_at_their_defaults_the_options_leave_the_resolved_config_as_it_was():
    dumped = EngineConfig().model_dump()
    assert not set(NEW_KEYS) & set(dumped)  # cell ids hash this dump: unchanged
    assert set(dumped) == set(EngineConfig.model_fields) - set(NEW_KEYS)
    chosen = EngineConfig(precision="bf16", channels_last=True, cuda_eval_batch_size=4096)
    assert {k: chosen.model_dump()[k] for k in NEW_KEYS} == {"precision": "bf16", "channels_last": True,
                                                             "cuda_eval_batch_size": 4096}
    assert EngineConfig(**chosen.model_dump()) == chosen
    # a pack shares them, and a difference is named whichever config comes first
    for pair in ([EngineConfig(), chosen], [chosen, EngineConfig()]):
        with pytest.raises(ValueError, match=r"\['channels_last', 'cuda_eval_batch_size', 'precision'\]"):
            check_packable(pair)


def test_the_classifier_family_takes_the_keys_and_keeps_its_cell_ids():
    try:
        from trainables import classifier
    except ImportError as exc:  # where Ray is not installed
        pytest.skip(f"trainables.classifier imports trainables.trial, which imports Ray ({exc})")

    chosen = {"precision": "bf16", "channels_last": True, "cuda_eval_batch_size": 4096}
    resolved = classifier.validate({"model": "cnn_small", **chosen})
    assert {k: resolved[k] for k in chosen} == chosen
    assert not set(NEW_KEYS) & set(classifier.validate({"model": "cnn_small"}))
    for key, value in [("precision", "half"), ("cuda_eval_batch_size", -1)]:
        with pytest.raises(ConfigError) as caught:
            classifier.validate({key: value})
        assert caught.value.key == key
    cfg, _ = classifier.parse_config(classifier.ClassifierConfig, resolved)
    assert (cfg.precision, cfg.channels_last, cfg.cuda_eval_batch_size) == ("bf16", True, 4096)
