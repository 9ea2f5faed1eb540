"""A family of your own: a classifier trained on randomly shifted images (data
augmentation by translation), trained by gensweep's one engine (`gensweep.fit`),
so it keeps checkpoints, resume, divergence handling and the output contract.

Spec keys: everything the `classifier` family takes, plus `max_shift` (pixels).
"""

import torch
from pydantic import BaseModel, ConfigDict, Field

import gensweep
from gensweep import classifier


class ShiftKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_shift: int = Field(default=2, ge=0, le=8)  # pixels, in each direction


class ShiftedSplit(gensweep.Split):
    """A training split whose batches are rolled by up to `max_shift` pixels (one
    random shift per batch). Only while gradients are on: the engine's evaluations
    run under no_grad and see the images as they are."""

    def shifted(self, max_shift: int, seed: int) -> "ShiftedSplit":
        self.max_shift, self.generator = max_shift, torch.Generator().manual_seed(seed)
        return self

    def inputs(self, rows):
        x = super().inputs(rows)
        if self.max_shift and torch.is_grad_enabled():
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=self.generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return x


def validate(config: dict) -> dict:
    own = {k: v for k, v in config.items() if k in ShiftKeys.model_fields}
    keys = gensweep.validate_model(ShiftKeys, own)  # errors name the key
    rest = classifier.validate({k: v for k, v in config.items() if k not in own})
    return {**rest, **keys.model_dump()}


def train(config: dict, data) -> None:
    cfg, model_args = classifier.parse_config(classifier.ClassifierConfig, config)
    device, info = gensweep.trial_device()
    ds = data[cfg.dataset]
    splits = classifier.make_splits(ds, cfg, device)
    plain = splits.pop("train")
    train_split = ShiftedSplit(plain.x, plain.y, plain.idx, plain.mean, plain.std).shifted(config["max_shift"], cfg.seed)
    torch.manual_seed(cfg.seed)  # initialization
    model = classifier.build_for(ds, cfg, model_args).to(device)
    report = gensweep.tune_reporter({**info, "n_params": gensweep.count_params(model)})
    gensweep.fit(model, train_split, splits, cfg, report, resume=gensweep.restored_state(config))


gensweep.register_family(gensweep.Family(name="shifted", validate=validate, load_data=classifier.load_data,
                                         train=train, count_params=classifier.model_params))
