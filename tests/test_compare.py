"""tlcourse.compare: the strategy table the notebooks 04/05 print, built from real runs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from tlcourse.compare import compare_runs, plot_strategies, strategy_row
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
        assert row.seconds == pytest.approx(run.seconds) and row.route == run.route
    head, everything = table.row("head"), table.row("all")
    assert head.trainable == 512 * 2 + 2 and everything.trainable == everything.total > head.trainable
    assert head.total == everything.total


def test_text_and_html(two_runs):
    table = compare_runs(two_runs)
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["strategy", "best", "val_acc"] and len(lines) == 3
    assert "1,026" in text and "(100.0%)" in text
    assert table._repr_html_().count("<tr>") == 3
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
