"""Figures a reviewer would accept: labelled axes with units, integer epochs, a title in words,
chance level, the certified curve of an interval-trained run, and a robustness figure that
stays readable with many models. The tests inspect the Figure objects, not pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from solvers.training import (
    ImplicitNetwork,
    history_figure,
    plot_history,
    plot_robustness,
    robustness_figure,
    train,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPRS = ("ImplicitNetwork(", "TrainConfig(", "History(", "{", "}")


@pytest.fixture(scope="module")
def history(digits):
    X, y, Xte, yte = digits
    return train(ImplicitNetwork(64, 4, 10), X[:100], y[:100], X_val=Xte[:50], y_val=yte[:50], epochs=2,
                 batch_size=50, gamma=0.5, progress=False)


@pytest.fixture(scope="module")
def interval_history(history):
    """``history`` as an interval-trained run records it: the radius and the certified accuracy per epoch."""
    config = dataclasses.replace(history.config, interval_eps=0.1)
    epochs = [{**r, "eps": 0.1 * r["epoch"] / 2, "val_certified": 0.2 * r["epoch"]} for r in history.epochs]
    return dataclasses.replace(history, config=config, epochs=epochs)


def axis_by_ylabel(fig, word):
    [ax] = [ax for ax in fig.axes if word in ax.get_ylabel()]
    return ax


def rows(clean, pgd=True, eps=(0.01, 0.05, 0.1)):
    out = []
    for e in eps:
        row = {"eps": e, "clean": clean, "certified_interval": clean * (1 - 5 * e),
               "certified_lipschitz": clean * (1 - 9 * e)}
        if pgd:
            row["pgd"] = clean * (1 - 2 * e)
        out.append(row)
    return out


def inside(inner, outer, slack=1.0):
    return (inner.x0 >= outer.x0 - slack and inner.y0 >= outer.y0 - slack
            and inner.x1 <= outer.x1 + slack and inner.y1 <= outer.y1 + slack)


def test_history_panels_have_y_labels_with_units(history):
    fig = history_figure(history)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert len(fig.axes) == 4 and all(labels), labels
    assert axis_by_ylabel(fig, "cross-entropy").get_ylabel() == "cross-entropy (nats per sample)"
    assert axis_by_ylabel(fig, "accuracy").get_ylabel() == "accuracy (fraction correct)"
    assert axis_by_ylabel(fig, "iterations").get_ylabel() == "iterations per sample"
    lip = axis_by_ylabel(fig, "bound")
    assert lip.get_yscale() == "log"
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "epoch", "epoch"]  # bottom row: shared epoch axis


def test_history_epoch_ticks_are_integers(history):
    fig = history_figure(history)
    fig.draw_without_rendering()
    for ax in fig.axes:
        ticks = ax.xaxis.get_majorticklocs()
        assert len(ticks) and np.all(ticks == np.round(ticks)), ticks


def test_history_default_title_is_the_config_in_words(history):
    title = history_figure(history).get_suptitle()
    assert title.startswith("Training: ")
    assert "μ∞(A) ≤ 0.5" in title and "2 epochs" in title and "batch 50" in title and "adam" in title
    assert not any(r in title for r in REPRS), title
    assert history_figure(history, title="digits, 4 hidden units").get_suptitle() == "digits, 4 hidden units"


def test_history_accuracy_panel_has_train_validation_and_chance(history):
    ax = axis_by_ylabel(history_figure(history, n_classes=10), "accuracy")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train", "validation", "chance (1/10)"]
    [chance] = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert np.allclose(chance.get_ydata(), 0.1) and chance.get_linestyle() == "--"
    assert ax.get_ylim() == (0, 1)
    no_chance = axis_by_ylabel(history_figure(history), "accuracy")
    assert not any(line.get_label().startswith("chance") for line in no_chance.get_lines())


def test_history_rejects_a_bad_number_of_classes(history):
    with pytest.raises(ValueError, match="n_classes"):
        history_figure(history, n_classes=1)


def test_interval_trained_history_draws_certified_accuracy(history, interval_history):
    fig = history_figure(interval_history, n_classes=10)
    ax = axis_by_ylabel(fig, "accuracy")
    [certified] = [line for line in ax.get_lines() if "certified" in line.get_label()]
    assert "(interval)" in certified.get_label() and "validation" in certified.get_label()
    assert np.allclose(certified.get_ydata(), [0.2, 0.4])
    assert "interval training at eps = 0.1" in fig.get_suptitle()
    plain = axis_by_ylabel(history_figure(history), "accuracy")
    assert not any("certified" in line.get_label() for line in plain.get_lines())


def test_history_without_a_lipschitz_bound_says_why(history):
    epochs = [{**r, "lipschitz": np.inf, "lipschitz_paper": np.inf} for r in history.epochs]
    fig = history_figure(dataclasses.replace(history, epochs=epochs))
    fig.draw_without_rendering()
    texts = [t.get_text() for t in axis_by_ylabel(fig, "bound").texts]
    assert texts == ["no bound at any epoch: μ∞(A) ≥ 1"]
    assert not axis_by_ylabel(history_figure(history), "bound").texts


def test_plot_history_writes_a_png(history, tmp_path):
    path = plot_history(history, tmp_path / "sub" / "training.png", n_classes=10)
    assert path == tmp_path / "sub" / "training.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_certify_title_names_only_what_is_drawn():
    fig = robustness_figure({"mu_inf": rows(0.9, pgd=False)})
    assert "PGD" not in fig.get_suptitle()
    assert "certified" in fig.get_suptitle()
    assert not any("PGD" in ax.get_title() for ax in fig.axes)
    with_pgd = robustness_figure({"mu_inf": rows(0.9)})
    assert "PGD" in with_pgd.get_suptitle()
    assert any("PGD" in ax.get_title() for ax in with_pgd.axes)


def test_robustness_axes_are_labelled_and_start_at_clean_accuracy():
    fig = robustness_figure({"mu_inf": rows(0.9)})
    assert fig.axes[0].get_ylabel().startswith("accuracy")
    for ax in fig.axes:
        assert ax.get_xlabel() == "l-inf radius eps (pixel units, data in [0, 1])"
        assert ax.get_ylim() == (0, 1)
        [line] = ax.get_lines()
        assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == 0.9


def test_many_models_share_one_readable_legend_inside_the_figure():
    names = ["implicit mu_inf", "implicit mu_inf + interval", "implicit norm_inf", "implicit mon",
             "feed-forward ReLU"]
    curves = {name: rows(0.95 - 0.05 * i) for i, name in enumerate(names)}
    fig = robustness_figure(curves)
    assert len(fig.axes) == 3  # interval, Lipschitz, PGD
    for ax in fig.axes:
        assert ax.get_legend() is None
        assert len(ax.get_lines()) == len(names)
    colours = [[line.get_color() for line in ax.get_lines()] for ax in fig.axes]
    assert colours[0] == colours[1] == colours[2] and len(set(colours[0])) == len(names)
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == names
    assert legend.get_texts()[0].get_fontsize() >= 9
    fig.draw_without_rendering()
    box = legend.get_window_extent()
    assert inside(box, fig.bbox)
    assert not any(box.overlaps(ax.get_tightbbox()) for ax in fig.axes)  # nor their tick labels


def test_plot_robustness_writes_a_png(tmp_path):
    path = plot_robustness({"mu_inf": rows(0.9)}, tmp_path / "robustness.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
