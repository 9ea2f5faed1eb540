"""gensweep's public API for plugins: your own models, datasets, probes, families
and figure kinds, registered in the same registries the built-ins use.

    # my_model.py, named in a spec as `plugins: [my_model.py]`
    import gensweep
    from torch import nn

    class TinyArgs(gensweep.ModelArgs):
        width: int = 64

    @gensweep.register_model("tiny", TinyArgs)
    def tiny(input_shape, num_classes, width):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes))

A name that is registered already is refused, naming both files. The manual is
docs/own-experiments.md. Everything here is re-exported from `trainables` (and
`analysis` for figure kinds, imported on first use: trial processes never need
matplotlib). A family of your own reuses the classifier's pieces
(`gensweep.classifier.validate`, `make_splits`, `build_for`, `load_data`) and the
trial glue (`trial_device`, `tune_reporter`, `restored_state`) around `fit`.
"""

from __future__ import annotations

from trainables import classifier
from trainables.data import DatasetInfo, ImageData, Split, register_dataset
from trainables.engine import EngineConfig, fit
from trainables.errors import ConfigError
from trainables.families import Family, register_family, validate_model
from trainables.models import ModelArgs, build_model, count_params, register_model
from trainables.probes import register_probe
from trainables.trial import restored_state, trial_device, tune_reporter

__all__ = [
    "ConfigError", "DatasetInfo", "EngineConfig", "Family", "ImageData", "ModelArgs", "Split", "build_model",
    "classifier", "count_params", "fit", "register_dataset", "register_family", "register_figure",
    "register_model", "register_probe", "restored_state", "trial_device", "tune_reporter", "validate_model",
]


def __getattr__(name: str):
    if name == "register_figure":
        from analysis.figures import register_figure

        return register_figure
    raise AttributeError(f"module 'gensweep' has no attribute {name!r}")
