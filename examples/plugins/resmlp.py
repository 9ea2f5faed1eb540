"""A model of your own: a small residual MLP. `input_shape` (C, H, W) and
`num_classes` come from the study's dataset; `width` and `depth` are spec keys."""

import math

from torch import nn

import gensweep


class ResMLPArgs(gensweep.ModelArgs):
    width: int = 128  # units in every hidden layer
    depth: int = 2  # residual blocks


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, x):
        return x + self.body(x)


@gensweep.register_model("resmlp", ResMLPArgs)
def resmlp(input_shape, num_classes, width, depth):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                         *[Block(width) for _ in range(depth)], nn.Linear(width, num_classes))
