"""Group a grid's cells into packed trials (`pack: K` in a spec).

Cells that are equal in every key but the per-model ones (seed, lr, weight_decay,
momentum: trainables.packed.PER_MODEL_KEYS) train together, at most K per trial, in
the grid's order. A pack is one Tune trial whose config is `{"pack": {"cells": [...], "ids":
[...], "id": "pack-<12 hex>"}}`; its folder is named by that id (a hash of the member
ids), and each cell still gets its own rows, under its own id, in the results
(analysis/collect.py).
"""

from __future__ import annotations

import hashlib
import json

from analysis.collect import PACK_KEY  # a packed trial's config key, named once (collect reads it)
from trainables.packed import PER_MODEL_KEYS


def _shared(cell: dict) -> str:
    """What the cells of one pack must have in common: everything but the per-model
    keys and bookkeeping (keys starting with "_")."""
    return json.dumps({k: v for k, v in cell.items() if k not in PER_MODEL_KEYS and not k.startswith("_")},
                      sort_keys=True, default=str)


def pack_cells(cells: list[dict], ids: list[str], size: int) -> list[dict]:
    """Packs (`{"cells", "ids", "id"}`) covering every cell once: groups of equal shared keys,
    each split into the fewest chunks of at most `size` cells, of equal sizes (+-1),
    in first-seen group order and grid order within a group."""
    groups: dict[str, list[int]] = {}
    for index, cell in enumerate(cells):
        groups.setdefault(_shared(cell), []).append(index)
    packs = []
    for members in groups.values():
        # Balanced: 21 cells at size 8 make packs of 7, 7, 7 rather than 8, 8, 5, so
        # packs running side by side end together.
        count = -(-len(members) // size)
        bounds = [round(i * len(members) / count) for i in range(count + 1)]
        for start, stop in zip(bounds, bounds[1:]):
            chunk = members[start:stop]
            chunk_ids = [ids[i] for i in chunk]
            packs.append({"cells": [cells[i] for i in chunk], "ids": chunk_ids, "id": pack_id(chunk_ids)})
    return packs


def pack_id(cell_ids: list[str]) -> str:
    """A packed trial's folder name: stable for the same member cells."""
    return "pack-" + hashlib.sha256(",".join(cell_ids).encode()).hexdigest()[:12]


def trial_size(config: dict) -> int:
    """Cells a Tune trial's config trains: a pack's size, else 1."""
    return len(config[PACK_KEY]["ids"]) if PACK_KEY in config else 1
