import json

from click.testing import CliRunner

from sanitas.cli import main


def test_datasets_lists_everything():
    res = CliRunner().invoke(main, ["datasets"])
    assert res.exit_code == 0, res.output
    for name in ("fashion-mnist", "mnist", "digits", "lfw-faces", "sample-images"):
        assert name in res.output


def test_models_lists_everything():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0
    for name in ("cnn", "mlp", "alexnet1", "vgg-small", "resnet-small", "linear", "sumpool-conv"):
        assert name in res.output


def test_train_prints_accuracy_then_hits_cache():
    args = ["train", "linear", "--dataset", "digits", "--epochs", "2", "--quiet"]
    first = CliRunner().invoke(main, args + ["--force"])  # trains even with a warm SANITAS_TEST_CACHE
    assert first.exit_code == 0, first.output
    assert "test accuracy" in first.output and "trained in" in first.output
    second = CliRunner().invoke(main, args)
    assert "loaded from cache" in second.output


def test_errors_are_one_line_not_a_traceback():
    res = CliRunner().invoke(main, ["train", "nope", "--dataset", "digits"])
    assert res.exit_code == 1
    assert "error: unknown model 'nope'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["train", "linear", "--dataset", "no-such-data"])
    assert res.exit_code == 1 and "unknown dataset" in res.output


def test_methods_and_layers_commands():
    r = CliRunner().invoke(main, ["methods"])
    assert r.exit_code == 0 and "guided_backprop" in r.output and "competitive" in r.output
    r = CliRunner().invoke(main, ["layers", "cnn", "--dataset", "digits"])
    assert r.exit_code == 0, r.output
    names = [line.split()[1] for line in r.output.splitlines()[2:] if line[:1].isdigit() and "parameters" not in line]
    assert names == ["features.conv1", "features.conv2", "fc1", "output"]


def test_randomize_command_writes_the_contract(tmp_path):
    out = tmp_path / "run"
    args = ["randomize", "linear", "--dataset", "digits", "--methods", "gradient,competitive(input_x_gradient)",
            "--metrics", "spearman_abs,ssim", "--images", "8", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    for f in ["results.parquet", "results.csv", "meta.json", "report.html"]:
        assert (out / f).exists(), f
    assert list((out / "figures").glob("*.png"))
    assert "competitive(input_x_gradient)" in r.output
    r = CliRunner().invoke(main, args[:-3] + ["--methods", "gradiant", "--out", str(out)])
    assert r.exit_code == 1 and "Did you mean" in r.output and "Traceback" not in r.output


def test_top_classes_flag_names_the_approximation(tmp_path):
    """--top-classes M: competitive methods compete among the M best classes, and say so in the results
    (a different name, so a resumed run never mixes exact and approximate cells)."""
    import pandas as pd

    out = tmp_path / "top"
    args = ["randomize", "linear", "--dataset", "digits", "--methods", "gradient,competitive(input_x_gradient)",
            "--metrics", "spearman_abs", "--images", "6", "--out", str(out), "-q"]
    r = CliRunner().invoke(main, args + ["--top-classes", "3"])
    assert r.exit_code == 0, r.output
    methods = set(pd.read_parquet(out / "results.parquet")["method"])
    assert methods == {"gradient", "competitive(input_x_gradient, top_classes=3)"}
    r = CliRunner().invoke(main, args + ["--top-classes", "0"])
    assert r.exit_code == 2 and "top-classes" in r.output


def test_data_randomization_and_input_invariance_commands(tmp_path):
    r = CliRunner().invoke(main, ["data-randomization", "linear", "--dataset", "digits", "--methods", "gradient",
                                  "--metrics", "spearman_abs", "--images", "8", "--epochs", "2",
                                  "--target-accuracy", "0.9", "--train-size", "all", "--out", str(tmp_path / "dr"),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    assert "NOT reached" in r.output and "passes" in r.output and (tmp_path / "dr" / "report.html").exists()
    from sanitas.data import load_dataset

    meta = json.loads((tmp_path / "dr" / "meta.json").read_text())
    assert meta["permuted_training"]["n_train"] == len(load_dataset("digits", "train"))   # every training image
    r = CliRunner().invoke(main, ["data-randomization", "linear", "--dataset", "digits", "--train-size", "some"])
    assert r.exit_code == 2 and "'some' is not a whole number" in r.output
    r = CliRunner().invoke(main, ["input-invariance", "linear", "--dataset", "digits", "--methods",
                                  "gradient,input_x_gradient", "--images", "8", "--out", str(tmp_path / "ii"), "-q"])
    assert r.exit_code == 0, r.output
    assert "largest logit difference" in r.output


def test_biases_command_writes_the_contract(tmp_path):
    out = tmp_path / "biases"
    args = ["biases", "linear", "--dataset", "digits", "--images", "16", "--distill", "--distill-steps", "4",
            "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    for f in ["results.parquet", "results.csv", "meta.json", "report.html", "summary.csv", "layers.csv"]:
        assert (out / f).exists(), f
    assert len(list((out / "figures").glob("*.png"))) == 2
    assert "zero_bias_accuracy" in r.output and "distilled_accuracy" in r.output
    import pandas as pd

    t = pd.read_parquet(out / "results.parquet")
    assert {"method", "variant", "stage", "metric", "image", "value"} <= set(t.columns)
    assert set(t["variant"]) == {"original", "zero_bias", "distilled"}
    r = CliRunner().invoke(main, ["biases", "linear", "--dataset", "digits", "--images", "0", "--out", str(out)])
    assert r.exit_code == 1 and "positive" in r.output and "Traceback" not in r.output
