"""The model spec (issue 20): one way to name a model, accepted by every command, config and API call.

A user's own model reaches sanitas as a registry name, a pickled module, a TorchScript file, a state_dict with
its class (``file.py:Class`` or ``module:Class``, with constructor arguments), or a Hugging Face directory;
what cannot be loaded is a one-line error that names the file or module and the fix.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from sanitas.cli import main
from sanitas.errors import ConfigError, ModelError, UnknownNameError
from sanitas.models import fresh_model, load_model, model_source

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """A user's CNN for 8x8 grey digits (not one of sanitas' reference models)."""

        def __init__(self, num_classes=10, width=4):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Linear(width * 16, num_classes)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))


    class TwoHeads(Net):
        """Returns two (N, K) tensors: which one holds the logits is the user's to say (--output)."""

        def forward(self, x):
            z = super().forward(x)
            return z * 2, z
''')

SCRIPT = textwrap.dedent('''
    import torch
    from torch import nn


    class ScriptNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))


    if __name__ == "__main__":
        import sys
        torch.manual_seed(0)
        torch.save(ScriptNet(), sys.argv[1])
''')


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: usermodels.py, the same trained-looking Net saved in every way, and a Hugging Face dir."""
    d = tmp_path_factory.mktemp("user")
    (d / "usermodels.py").write_text(USER_MODULE)
    sys.path.insert(0, str(d))
    try:
        import usermodels
    finally:
        sys.path.remove(str(d))
    torch.manual_seed(0)
    net = usermodels.Net(width=5).eval()
    torch.save(net.state_dict(), d / "net_state.pt")
    torch.save(net, d / "net_whole.pt")
    torch.jit.save(torch.jit.script(net), d / "net_script.pt")
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, d / "checkpoint.pt")
    torch.save(usermodels.TwoHeads(width=5).eval().state_dict(), d / "two_state.pt")
    (d / "script.py").write_text(SCRIPT)
    import subprocess

    subprocess.run([sys.executable, str(d / "script.py"), str(d / "main_pickled.pt")], check=True, cwd=d)
    sys.modules.pop("usermodels", None)
    return d, net


def _x():
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_spec_strings_and_mappings_parse_without_loading(tmp_path):
    assert model_source("cnn").kind == "name"
    src = model_source("mymodels.py:Net(width=32, layers=[1, 2])@w.pt")
    assert (src.kind, src.target, src.args, src.weights) == ("class", "mymodels.py:Net", {"width": 32, "layers": [1, 2]},
                                                              "w.pt")
    assert model_source("pkg.models:Net").has_weights is False  # an architecture: sanitas trains it
    assert model_source("model.pt").kind == "file"
    hf = tmp_path / "hf"
    hf.mkdir()
    assert model_source(str(hf)).kind == "huggingface"
    src = model_source({"class": "m.py:Net", "args": {"width": 3}, "weights": "w.pt", "output": "logits"})
    assert (src.args, src.output, src.spec_string()) == ({"width": 3}, "logits", "m.py:Net(width=3)@w.pt")
    assert model_source("m.pt", output="1").output == 1
    for bad, words in (({"file": "a.pt", "name": "cnn"}, "exactly one"), ({"file": "a.pt", "args": {}}, "go with class"),
                       ({"class": "Net"}, "module:Class"), ({"model": "cnn"}, "unknown key"),
                       ("m.py:Net(3)@w.pt", "key=value")):
        with pytest.raises(ConfigError, match=words):
            model_source(bad)
    with pytest.raises(ConfigError, match="output='a'.*and output='b'"):
        model_source({"file": "m.pt", "output": "a"}, output="b")


def test_a_folder_never_shadows_a_reference_model(tmp_path, monkeypatch):
    """A bare word is a reference model's name; a folder of that name is read when written as a path, and an
    unknown name that is a folder here says so."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnn").mkdir()
    (tmp_path / "my-vit").mkdir()
    assert model_source("cnn").kind == "name"
    assert model_source("./cnn").kind == model_source("my-vit/").kind == "huggingface"
    with pytest.raises(UnknownNameError, match=r"A folder named 'my-vit' is here: write it as a path, ./my-vit"):
        fresh_model("my-vit", (1, 8, 8), 10)


@pytest.mark.parametrize("spec", ["net_whole.pt", "net_script.pt", "usermodels.py:Net(width=5)@net_state.pt",
                                  "usermodels:Net(width=5)@net_state.pt", "usermodels.py:Net(width=5)@checkpoint.pt",
                                  "usermodels.py:Net(width=5)@net_whole.pt"])
def test_every_form_loads_the_same_model(user, spec, monkeypatch):
    """A pickled module, TorchScript, a state_dict (or a checkpoint holding one, or a whole pickled module) with
    its class by file or by importable module name: the same logits. Importable means: from the folder the user
    runs sanitas in (the console script's own folder is what Python puts first on sys.path)."""
    d, net = user
    monkeypatch.chdir(d)
    loaded = load_model(spec)
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)
    assert not loaded.training


def test_a_pickle_saved_from_a_script_needs_its_file(user, monkeypatch):
    d, _ = user
    monkeypatch.chdir(d)
    with pytest.raises(ModelError, match=r"saved from a script.*'ScriptNet'.*script.py:ScriptNet@"):
        load_model("main_pickled.pt")
    net = load_model("script.py:ScriptNet@main_pickled.pt")  # the class is found in the named file
    assert type(net).__name__ == "ScriptNet"


def test_what_cannot_be_loaded_says_what_and_how(user, monkeypatch, tmp_path):
    d, _ = user
    monkeypatch.chdir(d)
    cases = [("nosuchmodule:Net@net_state.pt", ModelError, r"cannot import module 'nosuchmodule'.*path/to/"),
             ("usermodels.py:Nope@net_state.pt", ModelError, r"has no 'Nope'.*defines: Net, TwoHeads"),
             ("net_state.pt", ModelError, r"holds a state_dict.*mymodels.py:Net@net_state.pt"),
             ("usermodels.py:Net(width=3)@net_state.pt", ModelError, r"do not fit Net.*features.0.weight"),
             ("usermodels.py:Net(depth=3)@net_state.pt", ModelError, r"Net\(depth=3\) failed: TypeError"),
             ("missing.pt", ModelError, "no model file at missing.pt"),
             ("cnnn", UnknownNameError, "Did you mean 'cnn'")]
    for spec, error, words in cases:
        with pytest.raises(error, match=words):
            load_model(spec, "digits")
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    with pytest.raises(ModelError, match=r"importing .*broken.py failed: ModuleNotFoundError.*no_such_dependency"):
        load_model(f"{tmp_path / 'broken.py'}:Net@{d / 'net_state.pt'}")


def test_fresh_architecture_of_every_trainable_form(user, monkeypatch):
    """What training on permuted labels starts from: the same architecture, new weights, the caller's RNG
    untouched; TorchScript cannot be re-initialised and says what to give instead."""
    d, net = user
    monkeypatch.chdir(d)
    state = torch.get_rng_state()
    for spec in ("net_whole.pt", "usermodels.py:Net(width=5)", "usermodels.py:Net(width=5)@net_state.pt"):
        fresh = fresh_model(spec, seed=3)
        assert type(fresh).__name__ == "Net"
        assert [p.shape for p in fresh.parameters()] == [p.shape for p in net.parameters()]
        assert not torch.equal(fresh.head.weight, net.head.weight)
        assert torch.equal(fresh_model(spec, seed=3).head.weight, fresh.head.weight)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ModelError, match="TorchScript.*class instead"):
        fresh_model("net_script.pt")


def test_hugging_face_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                    num_labels=10)
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
    fresh = fresh_model(str(tmp_path / "hf"), seed=5)
    assert type(fresh) is type(model) and not torch.equal(fresh.classifier[1].weight, model.classifier[1].weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="without config.json"):
        load_model(str(tmp_path / "empty"))


def _run(args, cwd):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args)
    finally:
        os.chdir(old)


def test_every_command_takes_a_users_model_file(user, tmp_path):
    """The commands that rejected a pickled module as an 'unknown model' (train, data-randomization) and the
    others, each with a user's file; data randomization trains the user's class on permuted labels."""
    d, _ = user
    spec = "usermodels.py:Net(width=5)@net_state.pt"
    small = ["--dataset", "digits", "--images", "4", "-q"]
    runs = {
        "layers": ["layers", spec, "--dataset", "digits"],
        "methods": ["methods", "--model", "net_whole.pt", "--dataset", "digits"],
        "train": ["train", "usermodels.py:Net(width=5)", "--dataset", "digits", "--epochs", "1", "-q"],
        "methods --model (TorchScript)": ["methods", "--model", "net_script.pt", "--dataset", "digits"],
        "randomize": ["randomize", "net_whole.pt", *small, "--methods", "gradient", "--metrics", "spearman_abs",
                      "--out", str(tmp_path / "r")],
        "data-randomization": ["data-randomization", "net_whole.pt", *small, "--methods", "gradient",
                               "--metrics", "spearman_abs", "--epochs", "2", "--train-size", "100",
                               "--out", str(tmp_path / "dr")],
        "input-invariance": ["input-invariance", spec, *small, "--methods", "gradient", "--out", str(tmp_path / "ii")],
        "evaluate": ["evaluate", spec, *small, "--methods", "gradient,random", "--shuffles", "1",
                     "--out", str(tmp_path / "ev")],
        "biases": ["biases", spec, "net_whole.pt", *small, "--out", str(tmp_path / "b")],
    }
    for name, args in runs.items():
        r = _run(args, d)
        assert r.exit_code == 0, f"{name}: {r.output}"
        assert "Traceback" not in r.output
    assert "features.0" in _run(runs["layers"], d).output
    # TorchScript: what needs the model's layers (hooks) is refused with what to give instead
    for command in (["randomize", "net_script.pt", *small, "--out", str(tmp_path / "rs")],
                    ["biases", "net_script.pt", *small, "--out", str(tmp_path / "bs")]):
        r = _run(command, d)
        assert r.exit_code == 1 and "TorchScript" in r.output and "mymodels.py:Net@weights.pt" in r.output, r.output
    import json

    meta = json.loads((tmp_path / "dr" / "meta.json").read_text())
    assert "freshly initialised and trained on permuted labels" in meta["training"]["permuted_labels"]
    assert meta["about"]["model_spec"] == "net_whole.pt"


def test_output_selector_everywhere(user, tmp_path):
    """A model returning two (N, K) tensors: refused with the choices, then run with --output, in the API
    (a spec mapping), on the command line and in a config."""
    d, _ = user
    spec = "usermodels.py:TwoHeads(width=5)@two_state.pt"
    base = ["randomize", spec, "--dataset", "digits", "--images", "4", "--methods", "gradient", "--metrics",
            "spearman_abs", "-q", "--out", str(tmp_path / "o")]
    r = _run(base, d)
    assert r.exit_code == 1 and "output=INDEX" in r.output
    assert _run(base + ["--output", "1"], d).exit_code == 0
    evaluate = ["evaluate", spec, "--dataset", "digits", "--images", "4", "--methods", "gradient", "--shuffles", "1",
                "-q", "--out", str(tmp_path / "e")]
    assert "output=INDEX" in _run(evaluate, d).output  # the decision-flip passes read the logits the same way
    r = _run(evaluate + ["--output", "1"], d)
    assert r.exit_code == 0, r.output
    r = _run(["train", "usermodels.py:TwoHeads(width=5)", "--dataset", "digits", "--epochs", "1", "-q",
              "--output", "1"], d)
    assert r.exit_code == 0, r.output
    src = model_source({"class": "usermodels.py:TwoHeads", "args": {"width": 5}, "weights": "two_state.pt",
                        "output": 1})
    assert src.output == 1
    from conftest import study_config

    config = study_config(tmp_path / "study.yaml", {
        "check": "model_randomization", "output": 1, "methods": ["gradient"], "metrics": ["spearman_abs"],
        "model": {"class": f"{d / 'usermodels.py'}:TwoHeads", "args": {"width": 5}, "weights": str(d / "two_state.pt")}})
    r = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "study"), "-q"])
    assert r.exit_code == 0, r.output


def test_config_model_spec_errors_name_the_line(user, tmp_path):
    d, _ = user
    config = tmp_path / "bad.yaml"
    config.write_text(textwrap.dedent("""
        paper: mine
        experiments:
          one:
            check: model_randomization
            model: {class: nowhere.py:Net, weights: w.pt}
    """))
    r = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "bad.yaml:6" in r.output and "no file or folder at nowhere.py" in r.output
    config.write_text(config.read_text().replace("{class: nowhere.py:Net, weights: w.pt}", "cnnn"))
    r = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "Did you mean 'cnn'" in r.output


def test_training_a_users_class_is_cached_by_its_source(user, tmp_path, monkeypatch):
    """A user's architecture trains from a fresh initialisation and is cached like a reference model; an edited
    class file is a new architecture (trained again), not a stale cache hit."""
    from sanitas.models import train

    d, _ = user
    mod = tmp_path / "archs.py"
    mod.write_text(USER_MODULE)
    spec = f"{mod}:Net(width=3)"
    first = train(spec, "digits", epochs=1, quiet=True)
    assert not first.from_cache and type(first.model).__name__ == "Net"
    assert train(spec, "digits", epochs=1, quiet=True).from_cache
    mod.write_text(USER_MODULE + "\n# edited\n")
    assert not train(spec, "digits", epochs=1, quiet=True).from_cache
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "two.npz", x=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
    with pytest.raises(ModelError, match=rf"has 10 outputs and the dataset 2 classes.*'{mod}:Net\(num_classes=2\)'"):
        train(spec, str(tmp_path / "two.npz"), epochs=1, quiet=True)
