"""A grid study's trials as Tune sees them: a `Searcher` proposing its cells (or
packs) one by one, in grid order.

Tune's own `tune.grid_search` deep-copies the whole param space, the list of every
cell included, for each trial it makes: a 1,000-cell grid spent about 20 s of its
start on copies (N trials x N cells). Here each trial's config is built once, and
Tune asks for the next one only as trials start.

Tune saves the searcher with the experiment (`save`/`restore`: how many it has
proposed), so a resumed experiment goes on where it was.
"""

from __future__ import annotations

import json

from ray.tune.search import Searcher


class GridOrder(Searcher):
    CKPT_FILE_TMPL = "grid-order-{}.json"

    def __init__(self, key: str, items: list[dict]):
        """`key`: the config key each item goes under (trainables.contract's CELL_KEY or PACK_KEY)."""
        super().__init__()
        self.key, self.items, self.proposed = key, items, 0

    def planned(self) -> int:
        """Trials this searcher proposes."""
        return len(self.items)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the trials come from the spec, not from Tune's param_space

    def suggest(self, trial_id: str):
        if self.proposed >= len(self.items):
            return Searcher.FINISHED
        item = self.items[self.proposed]
        self.proposed += 1
        return {self.key: item}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a grid proposes the same trials whatever they report

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"proposed": self.proposed, "of": len(self.items)}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.proposed = json.load(f)["proposed"]
