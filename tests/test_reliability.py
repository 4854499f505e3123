"""Nothing silent: the user's model never changes, nothing is coerced or trusted blindly, and bad input is a
clear error (issue 21). One test (or one row of a table) per case of the issue; faults on disk and
concurrent runs are in test_faults.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from sanitas.checks import data_randomization, input_invariance, model_randomization
from sanitas.cli import main
from sanitas.errors import (ConfigError, InputError, ModelError, NonFiniteError, ResultsBusyError, SanitasError,
                            StorageError)
from sanitas.experiments import evaluate_claim, load_config, run_config
from sanitas.experiments.claims import FAILS, HOLDS, NOT_RUN
from sanitas.experiments.runners import Outcome
from sanitas.explain import explain, get_explainer
from sanitas.models import build_model, load_model, train
from sanitas.utils.hashing import model_fingerprint


class BNNet(nn.Module):
    """conv, BatchNorm, ReLU, Dropout, linear head: every forward pass in training mode leaves a trace."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()
        self.output = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.output(self.flat(self.drop(self.relu(self.bn(self.conv(x))))))


def _net(classes=5, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return BNNet(classes)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return build_model("cnn", (1, 8, 8), 10)


# -- 1. the user's model and the process are left as they were ----------------------------------------

def _run_check(kind, m, other, x, y):
    q = {"calibrate": False, "quiet": True}
    if kind == "data_randomization":
        return data_randomization(m, x, y, permuted_model=other, methods=["gradient"], metrics=["spearman_abs"], **q)
    if kind == "input_invariance":
        return input_invariance(m, x, y, methods=["gradient"], metrics=["spearman_abs"], quiet=True)
    if kind == "evaluate":
        from sanitas.evaluate import evaluate_quality

        return evaluate_quality(m, x, y, methods=["gradient"], n_shuffles=1, quiet=True, test_method="asymptotic")
    if kind == "completeness":
        from sanitas.evaluate import completeness

        return completeness(m, x, "input_x_gradient")
    mode, target = kind.split("/")
    return model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], mode=mode, target=target,
                               smooth_samples=2, **q)


@pytest.mark.parametrize("kind", ["cascading/label", "independent/predicted", "smooth/original", "efficient/label",
                                  "random_logit/label", "random_logit/predicted", "data_randomization",
                                  "input_invariance", "evaluate", "completeness"])
def test_checks_leave_a_training_model_and_the_rng_untouched(kind, batch):
    """Item 1: random_logit's class count ran a forward pass in training mode (BatchNorm statistics and
    the global RNG moved); every check must leave state_dict, training flags and RNG state as they were."""
    x, y = batch
    m, other = _net().train(), _net(seed=1).train()
    m.output.eval()  # a mixed state must come back exactly
    state = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [mod.training for mod in m.modules()]
    fingerprints = model_fingerprint(m), model_fingerprint(other)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    _run_check(kind, m, other, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [mod.training for mod in m.modules()] == flags
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm running statistics and num_batches_tracked included
    assert (model_fingerprint(m), model_fingerprint(other)) == fingerprints


def test_accuracy_restores_mixed_training_flags(batch):
    """Item 1's audit: models.accuracy put the whole model back with model.train(was), so a model whose
    modules were in mixed modes came back uniform."""
    from sanitas.models import accuracy

    x, y = batch
    m = _net().train()
    m.output.eval()
    flags = [mod.training for mod in m.modules()]
    rng = torch.get_rng_state()
    accuracy(m, x, y % 5)
    assert [mod.training for mod in m.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)


# -- one table of bad inputs: each a SanitasError whose message names the problem --------------------------

def _one_class_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))


BAD_INPUTS = [
    # 7: the checks validate labels like explain validates targets (no truncation, no 0/1, no flattening)
    ("labels-float", lambda m, x, y: model_randomization(m, x, y.float() + 0.5, methods=["gradient"],
                                                         metrics=["spearman_abs"]),
     InputError, "integer class indices"),
    ("labels-bool", lambda m, x, y: model_randomization(m, x, y > 1, methods=["gradient"], metrics=["spearman_abs"]),
     InputError, "integer class indices"),
    ("labels-2d", lambda m, x, y: model_randomization(m, x, y.reshape(2, 2), methods=["gradient"],
                                                      metrics=["spearman_abs"]),
     InputError, "1-d"),
    ("target-2d", lambda m, x, y: explain(m, x, y.reshape(2, 2)), InputError, "1-d"),
    ("target-float", lambda m, x, y: explain(m, x, y.float()), InputError, "integer class indices"),
    ("samples-2.7", lambda m, x, y: get_explainer("smoothgrad", samples=2.7), ConfigError, "whole number"),
    ("seed-1.5", lambda m, x, y: model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"], seed=1.5),
     ConfigError, "whole number"),
    ("activity-layers-empty", lambda m, x, y: get_explainer("activity(layers=[])"), ConfigError, "non-empty"),
    ("data-randomization-5-vs-10-classes",
     lambda m, x, y: data_randomization(_net(5), x, y, permuted_model=_net(10, seed=1), methods=["gradient"],
                                        metrics=["spearman_abs"]),
     ModelError, "different numbers of classes"),
    # 8: NaN and infinity are refused as options
    ("ig-baseline-nan", lambda m, x, y: get_explainer("integrated_gradients", baseline=float("nan")),
     NonFiniteError, "baseline"),
    ("ig-baseline-inf", lambda m, x, y: get_explainer("integrated_gradients(baseline=inf)"), NonFiniteError,
     "baseline"),
    ("ig-baseline-nan-tensor",
     lambda m, x, y: get_explainer("integrated_gradients", baseline=torch.full((1, 8, 8), float("nan"))),
     NonFiniteError, "baseline"),
    ("lrp-epsilon-nan", lambda m, x, y: get_explainer("lrp_epsilon(epsilon=nan)"), NonFiniteError, "epsilon"),
    ("smoothgrad-sigma-nan", lambda m, x, y: get_explainer("smoothgrad(gradient, sigma=nan)"), NonFiniteError,
     "sigma"),
    ("smoothgrad-sigma-inf", lambda m, x, y: get_explainer("smoothgrad(gradient, sigma=inf)"), NonFiniteError,
     "sigma"),
    # 13: seeds are validated before anything is computed
    ("seed-negative", lambda m, x, y: model_randomization(m, x, y, methods=["gradient"],
                                                          metrics=["spearman_abs"], seed=-1),
     ConfigError, "seed"),
    ("seed-huge", lambda m, x, y: model_randomization(m, x, y, methods=["gradient"],
                                                      metrics=["spearman_abs"], seed=10**23),
     ConfigError, "seed"),
    ("calibration-seed", lambda m, x, y: __import__("sanitas.similarity.calibration", fromlist=["c"]).calibrate(
        "spearman_abs", x=x, seed=-1), ConfigError, "seed"),
    # 14: tracebacks before
    ("ig-steps-2.5", lambda m, x, y: get_explainer("integrated_gradients(steps=2.5)"), ConfigError, "whole number"),
    ("ig-steps-abc", lambda m, x, y: get_explainer("integrated_gradients(steps=abc)"), ConfigError, "whole number"),
    ("ig-steps-1e9", lambda m, x, y: get_explainer("integrated_gradients(steps=1e9)"), ConfigError, "at most"),
    ("smoothgrad-samples-abc", lambda m, x, y: get_explainer("smoothgrad(samples=abc)"), ConfigError,
     "whole number"),
    ("y-predicted", lambda m, x, y: model_randomization(m, x, "predicted", methods=["gradient"],
                                                        metrics=["spearman_abs"]),
     InputError, "target="),
    ("random-logit-one-class",
     lambda m, x, y: model_randomization(_one_class_model(), x, torch.zeros(4, dtype=torch.long), methods=["gradient"],
                                         metrics=["spearman_abs"], mode="random_logit"), ModelError, "another class"),
    ("train-lr-nan", lambda m, x, y: train("linear", "digits", lr=float("nan")), NonFiniteError, "lr"),
    ("train-lr-negative", lambda m, x, y: train("linear", "digits", lr=-1), ConfigError, "lr"),
    ("train-weight-decay-negative", lambda m, x, y: train("linear", "digits", weight_decay=-5), ConfigError,
     "weight decay"),
    ("out-in-proc", lambda m, x, y: model_randomization(m, x, y, methods=["gradient"], metrics=["spearman_abs"],
                                                        out="/proc/sanitas-results"), StorageError, "cannot write"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_are_clear_errors(call, error, message, cnn, batch):
    """Items 7, 8, 13, 14: each bad value is a SanitasError naming it, never coerced or a raw traceback."""
    x, y = batch
    with pytest.raises(error, match=re.escape(message)) as info:
        call(cnn, x, y)
    assert isinstance(info.value, SanitasError)


def test_explain_and_the_checks_share_one_label_validation(cnn, batch):
    """Item 7: the same bad labels give the same message through explain and through a check."""
    x, y = batch
    for bad in (y.float() + 0.5, y > 1, y.reshape(2, 2), y + 10):
        with pytest.raises(InputError) as a:
            explain(cnn, x, bad)
        with pytest.raises(InputError) as b:
            model_randomization(cnn, x, bad, methods=["gradient"], metrics=["spearman_abs"])
        assert str(a.value).split(" ", 1)[1] == str(b.value).split(" ", 2)[2]  # "target ..." / "labels y ..."


def test_garbage_model_file_is_a_model_error(tmp_path):
    """Item 14: a .pt file that is not a saved module."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00garbage, not a torch file")
    with pytest.raises(ModelError, match="not a model saved with torch.save"):
        load_model(str(path))
    r = CliRunner().invoke(main, ["randomize", str(path), "-d", "digits", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not a model saved" in r.output and "Traceback" not in r.output


# -- 8. non-finite maps are an error that names the cause ------------------------------------------------

class _NaNHead(nn.Module):
    """Logits 2x on every image but the second, whose logits (and gradients) are NaN."""

    def forward(self, x):
        scale = torch.where(torch.arange(x.shape[0])[:, None] == 1, float("nan"), 2.0)
        return x.flatten(1)[:, :3] * scale


def test_nan_logits_are_reported_not_mapped(batch):
    x, _ = batch
    with pytest.raises(NonFiniteError, match=r"logits are NaN or infinite for 1 of 4 images \(e.g. \[1\]\)"):
        explain(_NaNHead(), x, torch.zeros(4, dtype=torch.long), method="gradient")


def test_a_method_that_makes_nan_is_named(cnn, batch):
    x, y = batch

    def broken(model, x, target):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteError, match="logits are finite, so broken itself produced them"):
        explain(cnn, x, y, method=broken)


# -- 9. a NaN reference is "not run", not "does not hold" --------------------------------------------------

@pytest.mark.parametrize("expect", [{"op": "<", "than": {"scalar": "ref"}}, {"op": "within", "tol": 0.1,
                                                                             "of": {"scalar": "ref"}}])
def test_nan_reference_measure_is_not_run(expect):
    claim = {"id": "c", "claim": "x", "experiment": "e", "measure": {"scalar": "value"}, "expect": expect}
    nan = evaluate_claim(claim, "p", Outcome(pd.DataFrame(), {"value": 0.5, "ref": float("nan")}))
    assert nan.verdict == NOT_RUN and "reference measure is NaN" in nan.why
    ok = evaluate_claim(claim, "p", Outcome(pd.DataFrame(), {"value": 0.5, "ref": 0.55}))
    assert ok.verdict in (HOLDS, FAILS)


# -- 12. random_logit with calibration -----------------------------------------------------------------------

def test_random_logit_calibrates_its_own_metric(cnn, batch):
    x, y = batch
    res = model_randomization(cnn, x, y, methods=["gradient"], metrics=["spearman_abs"], mode="random_logit")
    assert set(res.calibration["metric"]) == {"spearman_abs", "ssim_max_sign"}
    assert math.isfinite(res.calibration["mean"].iloc[0])


# -- 15. a swapped head is seen at once ---------------------------------------------------------------------

def test_swapped_head_is_not_hidden_by_a_cached_class_count(cnn, batch):
    x, _ = batch
    explain(cnn, x, torch.tensor([9, 9, 9, 9]))
    cnn.output = nn.Linear(cnn.output.in_features, 20)
    assert explain(cnn, x, torch.tensor([15, 15, 15, 15])).shape == x.shape
    cnn.output = nn.Linear(cnn.output.in_features, 5)
    with pytest.raises(InputError, match=r"the model has 5 classes"):
        explain(cnn, x, torch.tensor([9, 9, 9, 9]))
    assert explain(cnn, x, torch.tensor([3, 3, 3, 3])).shape == x.shape


# -- 16. quiet hides progress, never warnings ----------------------------------------------------------------

def test_quiet_still_shows_that_old_cells_are_deleted(cnn, batch, tmp_path, capfd):
    x, y = batch
    model_randomization(cnn, x, y, methods=["gradient"],
                        metrics=["spearman_abs"], out=tmp_path, calibrate=False, quiet=True)
    capfd.readouterr()
    model_randomization(cnn, x, y, methods=["gradient"],
                        metrics=["spearman_abs"], out=tmp_path, calibrate=False, quiet=True,
                        seed=1)
    assert "starting afresh" in capfd.readouterr().err


def test_quiet_still_shows_a_corrupt_checkpoint(capfd):
    first = train("linear", "digits", epochs=1, seed=7, quiet=True)
    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.path.write_bytes(bytes(data))
    capfd.readouterr()
    again = train("linear", "digits", epochs=1, seed=7, quiet=True)
    assert "is corrupt" in capfd.readouterr().err and not again.from_cache
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


# -- 5, 10, 13, 14 on the command line: exit codes and one-line errors -----------------------------------------

@pytest.fixture
def model_file(tmp_path, cnn):
    path = tmp_path / "cnn8.pt"
    torch.save(cnn, path)
    return path


@pytest.mark.parametrize("args, message", [
    (["randomize", "{model}", "-d", "digits", "--images", "0", "--methods", "gradient", "--metrics",
      "spearman_abs"], "--images must be positive"),
    (["evaluate", "{model}", "-d", "digits", "--images", "0"], "--images must be positive"),
    (["randomize", "{model}", "-d", "digits", "--seed", "-1"], "--seed must be at least 0"),
    (["randomize", "{model}", "-d", "digits", "--seed", "99999999999999999999999"], "--seed must be at most"),
    (["train", "linear", "-d", "digits", "--lr", "nan"], "finite"),
    (["train", "linear", "-d", "digits", "--lr", "-1"], "lr"),
    (["train", "linear", "-d", "digits", "--weight-decay", "-5"], "weight decay"),
    (["randomize", "{model}", "-d", "digits", "--images", "2", "--methods", "gradient", "--metrics",
      "spearman_abs", "--out", "/proc/sanitas-out"], "cannot write"),
])
def test_cli_refuses_bad_values_in_one_line(args, message, model_file, tmp_path):
    args = [a.format(model=model_file) for a in args]
    if "--out" not in args and args[0] != "train":
        args += ["--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out" / "results.csv").exists()


TINY_PT = """\
paper: mini
dataset: digits
images: 4
experiments:
  first:
    check: model_randomization
    model: {model}
    methods: [gradient]
    metrics: [spearman_abs]
    calibrate: false
  second:
    check: model_randomization
    model: {model}
    dataset: {dataset}
    methods: [gradient]
    metrics: [spearman_abs]
claims:
  - {{id: c1, claim: c, experiment: first, measure: {{method: gradient, metric: spearman_abs}}, expect: "< 2"}}
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_failed_experiment_fails_the_command(model_file, tmp_path, quiet):
    """Item 10: a failed experiment (here: a dataset that is not there) exits non-zero and says which and
    why, also under -q; the experiments that could run did."""
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(TINY_PT.format(model=model_file, dataset=tmp_path / "missing.npz"))
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "o")] + (["-q"] if quiet else []))
    assert r.exit_code == 1, r.output
    assert "experiment(s) failed" in r.output and "second" in r.output and "missing.npz" in r.output
    assert (tmp_path / "o" / "first" / "done.json").is_file()


# -- 6. configs are checked against a schema that names the line ------------------------------------------------

GOOD = """\
paper: p
dataset: digits
experiments:
  casc:
    check: model_randomization
    model: cnn
    mode: independent
    images: 8
    methods: [gradient]
"""


@pytest.mark.parametrize("old, new, message", [
    ("    mode: independent", "    mdoe: independent",
     r"p\.yaml:7: experiment 'casc': unknown key 'mdoe' \(did you mean 'mode'\?\)"),
    ("    images: 8", "    images: 8.7", r"p\.yaml:8: .*images must be a whole number"),
    ("    images: 8", "    images: abc", r"p\.yaml:8: .*images must be a whole number"),
    ("    images: 8", "    images: 0", r"p\.yaml:8: .*images must be positive"),
    ("    images: 8", "    seed: abc", r"p\.yaml:8: .*seed must be a whole number"),
    ("    images: 8", "    seed: -1", r"p\.yaml:8: .*seed must be at least 0"),
    ("    methods: [gradient]", "    methods: 5", r"p\.yaml:9: .*methods must be a list"),
    ("    methods: [gradient]", "    methods: [nope]", r"p\.yaml:9: .*unknown method"),
    ("    mode: independent", "    mode: sideways", r"p\.yaml:7: .*mode must be one of"),
    ("paper: p", "paper: [1, 2]", r"p\.yaml:1: paper must be a text"),
    ("    model: cnn", "    model: nonet", r"p\.yaml:6: .*unknown model 'nonet'"),
])
def test_config_schema_names_the_line(tmp_path, old, new, message):
    assert old in GOOD
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    r = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Traceback" not in r.output and not (tmp_path / "o" / "casc").exists()


def test_good_config_and_shipped_configs_pass_the_schema(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    assert load_config(path)["experiments"]["casc"]["mode"] == "independent"
    with pytest.raises(ConfigError, match="--images|images must be positive"):
        run_config(load_config(path), tmp_path / "o", images=0)


# -- 4. a replaced model file is new work -----------------------------------------------------------------

def test_replaced_model_file_is_rerun_not_loaded(tmp_path):
    model = tmp_path / "m.pt"
    cfg = yaml.safe_load(TINY_PT.format(model=model, dataset="digits"))
    del cfg["experiments"]["second"]
    torch.manual_seed(0)
    torch.save(build_model("cnn", (1, 8, 8), 10), model)
    first = run_config(cfg, tmp_path / "o", quiet=True).outcomes["first"].table
    torch.manual_seed(1)
    torch.save(build_model("cnn", (1, 8, 8), 10), model)
    again = run_config(cfg, tmp_path / "o", quiet=True).outcomes["first"].table
    fresh = run_config(cfg, tmp_path / "fresh", quiet=True).outcomes["first"].table
    pd.testing.assert_frame_equal(again, fresh)
    assert not again["value"].equals(first["value"])


# -- 2. a results directory has one writer --------------------------------------------------------------------

def test_locked_results_directory_is_refused(tmp_path, cnn, batch):
    """Item 2: while a directory is locked (by another process: here a child holding the OS lock), a check
    writing there stops at once with a clear message, and the command exits 1."""
    import subprocess
    import sys

    x, y = batch
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom sanitas.utils.io import directory_lock\n"
        f"with directory_lock({str(out)!r}):\n    print('locked', flush=True)\n    sys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsBusyError, match=rf"being written by another sanitas run \(process {holder.pid}\)"):
            model_randomization(cnn, x, y, methods=["gradient"], metrics=["spearman_abs"], out=out, calibrate=False)
        assert not (out / "cells").exists() and not (out / "results.csv").exists()
    finally:
        holder.communicate("\n", timeout=30)
    res = model_randomization(cnn, x, y, methods=["gradient"], metrics=["spearman_abs"], out=out, calibrate=False)
    assert (out / "results.csv").is_file() and len(res.table) == 5 * 4


def test_readme_documents_every_environment_variable():
    """Item 17: SANITAS_SYSTEM_DATA (and every other SANITAS_* variable the code reads) is in the README."""
    root = Path(__file__).resolve().parents[1]
    names = set()
    for f in (root / "src" / "sanitas").rglob("*.py"):
        names |= set(re.findall(r"\bSANITAS_[A-Z_]+\b", f.read_text()))
    readme = (root / "README.md").read_text()
    assert "SANITAS_SYSTEM_DATA" in names
    assert sorted(n for n in names if n not in readme) == []


def test_completeness_takes_the_model_first_and_the_old_order_with_a_warning():
    """completeness(model, x, method) like every check; the old (method, model, x) order gives the same fit."""
    import warnings

    from sanitas.evaluate import completeness

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    new = completeness(m, x, "input_x_gradient")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = completeness("input_x_gradient", m, x)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert new.alpha == old.alpha and new.r2 == old.r2


def test_without_labels_a_check_explains_the_models_prediction():
    """y=None (every check's signature): the trained model's predictions stand for the labels, and the results
    say so instead of reporting an accuracy against them."""
    torch.manual_seed(0)
    m = build_model("cnn", (1, 8, 8), 3)
    x = torch.rand(6, 1, 8, 8)
    res = model_randomization(m, x, methods=["gradient"], metrics=["spearman_abs"], calibrate=False, quiet=True)
    assert res.meta["labels"] == "predicted" and res.meta["accuracy"] != res.meta["accuracy"]  # NaN: not measured
    with torch.no_grad():
        assert (torch.tensor(res.table[res.table.stage == 0]["target"].to_numpy()[:6]) == m(x).argmax(1)).all()
