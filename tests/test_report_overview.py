"""The report a user reads (issue 20): the model, the data and the accuracy on the explained images at the top,
then the verdicts' place, then means that each say how many images they cover and how many were excluded and
why; methods left out (and the layer GradCAM used) in the report and on the command line; maps in a report
rebuilt from the API's ``out=`` folder."""

from __future__ import annotations

import re

import torch
from click.testing import CliRunner

from sanitas.cli import main


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"no section {sid!r}"
    return m.group(1)


def _randomize(model: str, out, images: int, methods: str):
    r = CliRunner().invoke(main, ["randomize", model, "-d", "digits", "-n", str(images), "--methods", methods,
                                  "--metrics", "spearman_abs", "-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return r


def test_overview_first_then_means_with_counts(tmp_path):
    out = tmp_path / "cnn"
    r = _randomize("cnn", out, 6, "gradient,gradcam")
    assert "note: gradcam used layer features.relu2 (ReLU)" in r.output
    assert "spearman_abs (mean over 6 images)" in r.output
    html = (out / "report.html").read_text()
    sections = re.findall(r'<section id="([\w-]+)">', html)
    assert sections[:3] == ["overview", "verdicts", "summary"]  # the verdicts come right after the overview
    import html as html_module

    top = html_module.unescape(_section(html, "overview"))
    for words in ("reference model 'cnn' (PaperCNN, ", "digits/test: 6 images", "accuracy on the explained images",
                  " of 6", "gradcam: layer", "features.relu2 (ReLU)", "1 means the map did not change"):
        assert words in top, words
    assert "n=6" in _section(html, "summary")


def test_excluded_images_are_counted_in_every_mean(tmp_path):
    """A method whose map of image 0 is constant: that image has no ranking, is left out of the mean, and the
    mean says so (how many, of how many, why) in the report and on the command line."""
    from sanitas.checks import model_randomization
    from sanitas.data import load_dataset
    from sanitas.models import build_model
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report
    from sanitas.report.tables import coverage_lines, mean_summary

    def blank_first(model, x, target):
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        g[0] = 0
        return g

    torch.manual_seed(0)
    net = build_model("cnn", (1, 8, 8), 10)
    ds = load_dataset("digits", "test").sample(5)
    res = model_randomization(net, ds.x, ds.y, methods={"blank": blank_first},
                              metrics=["spearman_abs"], out=tmp_path, quiet=True)
    means = mean_summary(res.table)
    row = means[(means["stage"] == 1)].iloc[0]
    assert (row["n"], row["nan_count"], row["constant_maps"]) == (4, 1, 1)
    assert any("1 of 5 excluded (1 constant map)" in line for line in coverage_lines(means, "spearman_abs"))
    html = check_report(res, tmp_path, check_figures(res, tmp_path)).read_text()
    assert "n=4" in html and "1 of 5 excluded (1 constant map)" in html


def test_refused_methods_are_in_the_report_and_the_output(tmp_path):
    out = tmp_path / "linear"
    r = _randomize("linear", out, 4, "gradient,gradcam")
    assert "note: gradcam was left out: " in r.output
    assert "gradcam: left out" in _section((out / "report.html").read_text(), "overview")


def test_verdicts_have_their_place_after_the_overview(tmp_path, monkeypatch):
    """The method verdicts (issue 18) go right after the overview: the report asks verdict_section for them."""
    from sanitas.report import html as report_html

    monkeypatch.setattr(report_html, "verdict_section",
                        lambda result: {"id": "verdicts", "title": "Verdicts", "text": "v", "tables": [], "figures": []})
    out = tmp_path / "v"
    _randomize("linear", out, 4, "gradient")
    assert re.findall(r'<section id="([\w-]+)">', (out / "report.html").read_text())[:3] == \
        ["overview", "verdicts", "summary"]


def test_report_of_an_api_run_has_its_maps(tmp_path):
    """model_randomization(..., out=DIR) from Python writes its figures and report.html as every check does
    (figures=False: none); `sanitas report DIR` draws the maps the finished cells keep, beside their inputs."""
    from sanitas.checks import model_randomization
    from sanitas.data import load_dataset
    from sanitas.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn", (1, 8, 8), 10)
    ds = load_dataset("digits", "test").sample(3)
    res = model_randomization(net, ds.x, ds.y, methods=["gradient"], metrics=["spearman_abs"], out=tmp_path / "a",
                              quiet=True)
    assert res.report == tmp_path / "a" / "report.html" and res.report.exists() and res.figures
    model_randomization(net, ds.x, ds.y, methods=["gradient"], metrics=["spearman_abs"], out=tmp_path, quiet=True,
                        figures=False)
    assert not (tmp_path / "figures").exists() and not (tmp_path / "report.html").exists()
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    maps = _section((tmp_path / "report.html").read_text(), "maps")
    assert maps.count("<img") == 6  # 2 images x 3 styles
    assert sorted(p.name for p in (tmp_path / "figures").glob("maps-image0-*.png")) == [
        "maps-image0-absolute.png", "maps-image0-diverging.png", "maps-image0-two_channel.png"]


def test_map_grid_is_one_image_with_the_cells_in_place(tmp_path, monkeypatch):
    """A grid of maps is one mosaic on one axes (an axes per cell took 5 s a figure: `sanitas report` of a
    randomization with 6 methods and 8 stages took 26 s); each cell sits in its row and column, in its style."""
    import numpy as np

    from sanitas.report import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    h = w = 6
    positive = torch.zeros(1, h, w)
    positive[0, 1:3, 1:3] = 1.0
    maps = {(0, "a"): positive[None], (1, "a"): -positive[None], (1, "b"): positive[None]}
    figures.map_grid(maps, ["original", "stage1"], ["a", "b"], torch.zeros(1, h, w), tmp_path / "g.png",
                     style="diverging")
    (fig,) = drawn
    assert len(fig.axes) == 1
    mosaic = fig.axes[0].get_images()[0].get_array()
    gap = max(1, round(0.08 * w))

    def cell(r, c):
        return np.asarray(mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w, :3])

    red, blue = cell(0, 1)[1, 1], cell(0, 2)[1, 1]  # row a: +1 at the original, -1 after randomization
    assert red[0] > 0.9 and red[2] < 0.1 and blue[2] > 0.9 and blue[0] < 0.1
    assert np.allclose(cell(1, 1), 1.0)  # no map of b at the original: left blank
    assert np.allclose(cell(1, 2), cell(0, 1))


def test_means_over_several_draws_say_images_and_draws(tmp_path):
    """With --draws 2 a randomized stage's mean pools 6 images x 2 draws: the command line and the report say
    so instead of counting 12 images."""
    out = tmp_path / "draws"
    r = CliRunner().invoke(main, ["randomize", "cnn", "-d", "digits", "-n", "6", "--methods", "gradient",
                                  "--metrics", "spearman_abs", "--draws", "2", "-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "spearman_abs (mean over 6 images x 2 random draws)" in r.output
    assert "mean over 6 images x 2 random draws per stage" in (out / "report.html").read_text()
