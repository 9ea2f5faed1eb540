"""The benchmark harness (bench/): the MLP's analytic FLOP count against torch's
FLOP counter, the warm-up/median logic, the docs/performance.md block, and the results file of a
quick run of a cheap benchmark."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import BENCHMARKS, EXPERIMENTS
from bench import compare
from bench.__main__ import main, merge_results
from bench.flops import mlp_train_flops
from bench.raystudy import _status_bytes, _uss_bytes
from bench.readme import END, START, render, replace_block, update_doc
from bench.record import Figure, repeat
from trainables.models import build_model


@pytest.mark.parametrize("hidden", [[512], [64, 32]])
def test_mlp_flop_count_matches_torch_flop_counter(hidden):
    model = build_model("mlp", hidden=hidden)
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    assert mlp_train_flops(16, hidden) == counter.get_total_flops()


def test_the_issue_mlp_count():
    # 2*(784*512 + 512*10)*2 + 2*512*10 per image: no input gradient for the first layer
    assert mlp_train_flops(1, [512]) == 1_636_352
    assert mlp_train_flops(60_000, [512]) == 60_000 * 1_636_352


def test_repeat_drops_the_warm_up_and_keeps_the_order():
    calls = iter(range(10))
    assert repeat(lambda: next(calls), reps=3) == [1, 2, 3]
    calls = iter(range(10))
    assert repeat(lambda: next(calls), reps=2, warmup=3) == [3, 4]
    with pytest.raises(ValueError):
        repeat(lambda: 0, reps=0)


def test_figure_value_is_the_median_and_met_follows_the_direction():
    fast = Figure.of("speedup", [4.0, 9.0, 6.0, 5.0, 7.0], unit="x", target=5.0)
    assert fast.value == 6.0 and fast.reps == [4.0, 9.0, 6.0, 5.0, 7.0] and fast.met is True
    assert Figure.of("overhead", [1.3, 1.1, 1.2], target=1.15, higher_is_better=False).met is False
    assert Figure.of("overhead", [1.0, 1.1, 1.2, 1.3], target=1.15, higher_is_better=False).value == pytest.approx(1.15)
    assert Figure.of("context", [2.0]).met is None
    assert Figure.of("context", [2.0]).to_dict()["met"] is None


def test_doc_block_is_replaced_between_the_markers_only():
    text = f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n"
    assert replace_block(text, "new table\n") == f"# title\n\nbefore\n{START}\nnew table\n{END}\nafter\n"
    assert replace_block("no markers here\n", "x") is None
    assert replace_block(f"{END}\n{START}\n", "x") is None  # out of order


def test_doc_without_markers_is_left_alone_with_a_warning(tmp_path, capsys):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n")
    assert update_doc(doc, "table") is False
    assert doc.read_text() == "# Performance\n"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("warning:") and "markers" in out[0]


def test_quick_run_writes_results_and_doc_only_where_asked(tmp_path):
    out, doc = tmp_path / "results.json", tmp_path / "performance.md"
    doc.write_text(f"## Performance\n{START}\n{END}\nmore\n")
    assert main(["--quick", "--only", "flops", "--reps", "1", "--out", str(out), "--doc", str(doc)]) == 0
    results = json.loads(out.read_text())
    machine = results["machine"]
    assert {"cpu_model", "cores", "torch", "torch_threads", "ray", "git_commit", "date"} <= set(machine)
    assert machine["torch_threads"] == torch.get_num_threads() and machine["cores"] >= 1
    entry = results["benchmarks"]["flops"]
    assert entry["quick"] is True and entry["reps"] == 1 and entry["seconds"] > 0
    (figure,) = entry["figures"]
    assert figure["name"] == "flops_percent_of_peak" and figure["unit"] == "%"
    assert figure["target"] == 40.0 and figure["higher_is_better"] is True
    assert len(figure["reps"]) == 1 and figure["value"] == figure["reps"][0] > 0
    assert figure["met"] == (figure["value"] >= 40.0)
    assert "GFLOP" in figure["notes"]
    text = doc.read_text()
    assert text.startswith(f"## Performance\n{START}\n") and text.endswith(f"{END}\nmore\n")
    assert "`flops_percent_of_peak`" in text and "| flops |" in text


def test_quick_run_writes_nothing_by_default(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr("bench.__main__.DEFAULT_OUT", tmp_path / "results.json")
    monkeypatch.setattr("bench.readme.update_doc", lambda *a: written.append(a))
    assert main(["--quick", "--only", "flops", "--reps", "1"]) == 0
    assert not (tmp_path / "results.json").exists() and not written


def test_unknown_benchmark_is_refused(capsys):
    assert main(["--only", "nope"]) == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


def test_results_merge_keeps_other_benchmarks(tmp_path):
    path = tmp_path / "results.json"
    old = {"seconds": 1.0, "figures": [Figure.of("a", [1.0]).to_dict()]}
    path.write_text(json.dumps({"benchmarks": {"datapath": old, "flops": old}}))
    new = {"seconds": 2.0, "figures": [Figure.of("b", [2.0]).to_dict()]}
    merged = merge_results(path, {"cpu_model": "x"}, {"flops": new}, 2.0, "python -m bench --only flops",
                           order=["flops", "datapath"])
    assert merged["benchmarks"] == {"datapath": old, "flops": new}
    assert list(merged["benchmarks"]) == ["flops", "datapath"]
    assert merged["command"] == "python -m bench --only flops" and merged["machine"] == {"cpu_model": "x"}


def test_render_has_a_row_per_figure():
    figure = Figure.of("sweep_overhead_ratio", [1.2], unit="x", target=1.15, higher_is_better=False, notes="why")
    results = {"machine": {"cpu_model": "CPU", "cores": 2, "torch": "2", "torch_threads": 2, "ray": "2",
                           "git_commit": "0123456789abcdef+dirty", "date": "2026-01-01"},
               "benchmarks": {"overhead": {"seconds": 60.0, "figures": [figure.to_dict()]}}}
    block = render(results)
    assert "| overhead | `sweep_overhead_ratio` | 1.2x | ≤ 1.15x | **no** |" in block
    assert "- `sweep_overhead_ratio`: why" in block and "1.0 min" in block
    assert "commit `0123456789ab+dirty`" in block


def test_registry_names_are_distinct_and_callable():
    assert list(BENCHMARKS) == ["datapath", "flops", "overhead", "scaling", "memory", "packing", "tiny", "many"]
    assert not set(BENCHMARKS) & set(EXPERIMENTS)
    assert all(callable(run) for run in {**BENCHMARKS, **EXPERIMENTS}.values())


def test_process_memory_is_read_from_proc():
    status = _status_bytes(os.getpid())
    assert status["VmHWM"] >= status["VmRSS"] > 0
    assert status["RssAnon"] + status["RssFile"] + status["RssShmem"] == pytest.approx(status["VmRSS"], abs=1 << 20)
    assert 0 < _uss_bytes(os.getpid()) <= status["VmHWM"]


def test_compare_tables_the_medians_and_says_which_way_is_better():
    samples = {"base": {"mlp_train_s": [1.0, 3.0, 2.0], "compute_k8_steps_per_s": [100.0, 90.0, 110.0]},
               "this": {"mlp_train_s": [1.5, 1.4, 1.6], "compute_k8_steps_per_s": [80.0, 95.0, 90.0]}}
    lines = compare.table(samples, "abc1234").splitlines()
    assert lines[1].split() == ["mlp_train_s", "2", "1.5", "0.750", "yes"]  # a shorter time is better
    assert lines[2].split() == ["compute_k8_steps_per_s", "100", "90", "0.900", "no"]  # a lower rate is worse
    assert lines[-1].startswith("medians of 3 samples each")


def test_compare_refuses_an_unknown_revision(capsys):
    assert compare.main(["no-such-revision"]) == 2
    assert capsys.readouterr().err.strip() == "error: no-such-revision: not a commit of this repository"
