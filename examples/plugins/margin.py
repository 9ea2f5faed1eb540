"""A probe of your own (the classification margin) and a figure kind that draws it.

`margin`: over the first `probe_size` test images (a fixed, class-balanced set),
the logit of the true class minus the largest other logit. Positive means correct;
its size says how confidently. Reported once, with the last evaluation, as
`margin_mean`, `margin_median` and `margin_neg_frac` (the fraction below 0).
"""

import torch

import gensweep
from trainables.probes import first_rows


@gensweep.register_probe("margin")
def margin(model, train, test, cfg):
    probe = first_rows(test, cfg.probe_size)  # a fixed, class-balanced set of test images
    model.eval()
    margins = []
    with torch.no_grad():
        for start in range(0, len(probe), cfg.eval_batch_size):
            rows = probe.idx[start : start + cfg.eval_batch_size]
            logits, labels = model(probe.inputs(rows)), probe.labels(rows)
            true = logits.gather(1, labels[:, None]).squeeze(1)
            other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
            margins.append(true - other)
    m = torch.cat(margins)
    return {"margin_mean": float(m.mean()), "margin_median": float(m.median()),
            "margin_neg_frac": float((m < 0).float().mean())}


@gensweep.register_figure("margin_bars")
def margin_bars(history, trials, fig_spec, path):
    """Mean test margin per value of `x` (a bar each; the error bar is the std over its trials)."""
    import matplotlib.pyplot as plt
    from analysis.figures import save_figure

    done = trials[trials["status"] == "ok"]
    if done.empty or "final_margin_mean" not in done:
        return None
    x = fig_spec.get("x") or "model"
    grouped = done.groupby(x)["final_margin_mean"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([str(k) for k in grouped.mean().index], grouped.mean().values,
           yerr=grouped.std().fillna(0).values, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel("test margin (true logit - best other)")
    save_figure(fig, fig_spec, path)  # atomic, closes the figure
    return path
