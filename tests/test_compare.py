"""tlcourse.compare: the strategy table the notebooks 04/05/07/08 print, built from real runs, and the
paired test behind every "A beats B" they print."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math

import pytest
import torch

from tlcourse.compare import (
    SETTINGS,
    compare_pair,
    compare_runs,
    mcnemar_p,
    paired_test,
    plot_strategies,
    setup_of,
    strategy_row,
    val_correct,
    versus_probe,
)
from tlcourse.config import PRESET_DEFAULTS
from tlcourse.engine import TrainConfig, train


@pytest.fixture(scope="module")
def two_runs(tiny_data_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    base = TrainConfig(data_dir=str(tiny_data_session), weights=None, epochs=2, batch_size=8, image_size=32,
                       progress="none", output_dir=str(out))
    return {"head": train(base, freeze="head", lr=1e-2), "all": train(base, freeze="all", lr=1e-4)}


def test_rows_come_from_the_runs(two_runs):
    table = compare_runs(two_runs)
    assert [r.name for r in table.rows] == ["head", "all"]
    for row in table.rows:
        run = two_runs[row.name]
        assert row.best_acc == run.best["acc"] and row.best_epoch == run.best["acc_epoch"]
        assert row.final_acc == run.history[-1]["val_acc"]
        assert row.seconds == pytest.approx(run.seconds) and row.route == run.route_description
    head, everything = table.row("head"), table.row("all")
    assert head.trainable == 512 * 2 + 2 and everything.trainable == everything.total > head.trainable
    assert head.total == everything.total


def test_text_and_html(two_runs):
    table = compare_runs(two_runs)
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["strategy", "best", "val_acc"] and len(lines) == 3 + len(table.notes())
    assert "1,026" in text and "(100.0%)" in text
    assert table._repr_html_().count("<tr>") == 3
    assert "dataclass" not in repr(type(table)) and _pretty(table) == text   # text/plain is the table
    with pytest.raises(KeyError, match="no strategy 'last_stage'"):
        table.row("last_stage")
    assert table.best().best_acc == max(r.best_acc for r in table.rows)


def test_best_epoch_tie_goes_to_the_first(two_runs):
    class Fake:
        history = [{"epoch": 1, "val_acc": 0.5, "val_loss": 0.7, "seconds": 1.0},
                   {"epoch": 2, "val_acc": 0.5, "val_loss": 0.6, "seconds": 2.0}]
        model = two_runs["head"].model

    row = strategy_row("fake", Fake())
    assert (row.best_epoch, row.seconds, row.route) == (1, 3.0, "plain")
    Fake.history = []
    with pytest.raises(ValueError, match="empty history"):
        strategy_row("empty", Fake())


def test_plot_strategies(two_runs):
    axes = plot_strategies(compare_runs(two_runs))
    assert [ax.get_title() for ax in axes] == ["best val accuracy", "trainable parameters (millions)",
                                               "training time (s)"]
    assert len(axes[0].patches) == 2


def _pretty(value) -> str:
    from IPython.lib.pretty import pretty

    return pretty(value)


def test_settings_that_differ_are_columns(two_runs):
    """Structural: every setting is either a column (it differs between the rows) or in the line
    'same in every row'; the two runs here differ in lr (given) and in their presets' recipes."""
    table = compare_runs(two_runs)
    head, everything = (two_runs[n].config.resolved() for n in ("head", "all"))
    differing = table.differing()
    assert "lr" in differing and table.row("head").setting("lr") == f"{head.lr:g}"
    assert table.row("all").setting("schedule") == everything.scheduler == PRESET_DEFAULTS["all"]["scheduler"]
    assert ("schedule" in differing) == (head.scheduler != everything.scheduler)
    assert ("smoothing" in differing) == (head.label_smoothing != everything.label_smoothing)
    shared = dict(table.shared())
    assert set(differing) | set(shared) == set(SETTINGS) and not set(differing) & set(shared)
    assert shared["epochs"] == "2" and shared["image size"] == "32"
    text = str(table)
    assert all(name in text.splitlines()[0] for name in differing)
    assert "same in every row: " in text and "chosen on the same" in text
    # the training images: tiny_data is an image folder with augmentation on by default
    assert table.row("head").setting("augmentation") == "none (1 un-augmented cached view)"
    assert table.row("all").setting("augmentation") == "fresh each epoch"
    assert table.row("head").epochs == 2 and table.row("head").images == len(val_correct(two_runs["head"])[0])


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(5, 0) == mcnemar_p(0, 5) == 2 / 32           # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert math.isclose(mcnemar_p(10, 2), 2 * sum(math.comb(12, i) for i in range(3)) / 2 ** 12)
    assert mcnemar_p(1, 0) == 1.0                                   # one disagreement proves nothing


def test_paired_test_counts_and_verdicts():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [1, 0, 1, 1, 0, 0, 1, 1]
    t = paired_test(a, b, ("head", "last_stage"))
    assert (t.images, t.correct, t.a_only, t.b_only, t.difference) == (8, (6, 5), 2, 1, 1)
    assert t.p_value == 1.0 and t.winner is None
    line = t.verdict()
    assert "8 images" in line and "1 image apart" in line and "McNemar p = 1" in line
    assert line.endswith("indistinguishable here")
    strong = paired_test(torch.tensor([True] * 40), torch.tensor([True] * 28 + [False] * 12), ("x", "y"))
    assert strong.significant and strong.winner == "x" and strong.verdict().endswith("x is better here")
    assert paired_test([0] * 12 + [1] * 28, [1] * 40, ("x", "y")).winner == "y"
    with pytest.raises(ValueError, match="same images"):
        paired_test([1, 0], [1])


def test_paired_test_of_runs(two_runs):
    for which in ("final", "best"):
        correct, targets = val_correct(two_runs["head"], which)
        accuracy = correct.float().mean().item()
        expected = two_runs["head"].history[-1]["val_acc"] if which == "final" else two_runs["head"].best["acc"]
        assert math.isclose(accuracy, expected, abs_tol=1e-9), which
    before = {k: v.clone() for k, v in two_runs["head"].model.state_dict().items()}
    val_correct(two_runs["head"], "best")
    assert all(torch.equal(v, two_runs["head"].model.state_dict()[k]) for k, v in before.items())  # put back
    test = compare_pair(two_runs, "head", "all")
    assert test.names == ("head", "all") and test.images == len(targets)
    assert test.correct[1] == round(two_runs["all"].history[-1]["val_acc"] * test.images)
    with pytest.raises(ValueError, match="no linear probe"):
        versus_probe(two_runs["all"], "all")
    probe_test = versus_probe(two_runs["head"], "head")
    assert probe_test.names == ("head", "linear probe")
    assert probe_test.correct[1] == round(two_runs["head"].probe.val_acc * test.images)  # the probe, image by image


def test_setup_says_cold_or_warm(two_runs):
    assert setup_of(two_runs["head"]).startswith(("cold", "warm"))
    assert setup_of(two_runs["all"]) == "none"          # the plain loop: nothing before the first epoch
    fake = type("R", (), {"route": "images decoded once into memory (64 images)"})()
    assert setup_of(fake).startswith("images decoded")
    fake.route = "cached x; 2 entries read from the feature cache; 0.1 s"
    assert setup_of(fake) == "warm: read from the feature cache"
