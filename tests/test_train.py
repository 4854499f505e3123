import json
import time

import pytest
import torch

from sanitas.errors import ConfigError
from sanitas.models import permute_labels, train
from sanitas.utils.paths import models_dir


def test_short_training_learns():
    r = train("mlp", "digits", epochs=3, seed=0, force=True)  # trains even with a warm SANITAS_TEST_CACHE
    assert r.test_accuracy > 0.8  # chance is 0.1
    assert not r.from_cache
    meta = json.loads(r.path.with_suffix(".json").read_text())
    assert meta["metrics"]["test_accuracy"] == r.test_accuracy
    assert meta["config"]["model"] == "mlp"


def test_cache_hit_is_instant_and_identical():
    a = train("cnn", "digits", epochs=1, seed=1)
    t = time.perf_counter()
    b = train("cnn", "digits", epochs=1, seed=1)
    assert b.from_cache
    assert time.perf_counter() - t < 2.0
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not b.model.training


def test_training_is_deterministic_and_seeded():
    a = train("linear", "digits", epochs=2, seed=5, cache=False)
    b = train("linear", "digits", epochs=2, seed=5, cache=False)
    c = train("linear", "digits", epochs=2, seed=6, cache=False)
    assert torch.equal(a.model.output.weight, b.model.output.weight)
    assert not torch.equal(a.model.output.weight, c.model.output.weight)


def test_training_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train("linear", "digits", epochs=1, seed=9, cache=False)
    assert torch.equal(torch.rand(3), expected)


def test_corrupt_checkpoint_is_detected_and_retrained():
    a = train("linear", "digits", epochs=1, seed=2)
    data = bytearray(a.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    a.path.write_bytes(bytes(data))
    b = train("linear", "digits", epochs=1, seed=2)
    assert not b.from_cache  # retrained, not loaded
    assert torch.equal(a.model.output.weight, b.model.output.weight)  # deterministic retrain
    assert train("linear", "digits", epochs=1, seed=2).from_cache  # and cached again


def test_truncated_checkpoint_is_detected():
    a = train("linear", "digits", epochs=1, seed=3)
    a.path.write_bytes(a.path.read_bytes()[:100])
    assert not train("linear", "digits", epochs=1, seed=3).from_cache


def test_cache_key_covers_the_config():
    a = train("linear", "digits", epochs=1, seed=4)
    b = train("linear", "digits", epochs=1, seed=4, weight_decay=1e-3, force=True)  # even with a warm test cache
    assert a.path != b.path and not b.from_cache
    assert a.path.parent == models_dir()


def test_permute_labels_is_a_seeded_permutation():
    y = torch.arange(1000) % 10
    p = permute_labels(y, seed=0)
    assert torch.equal(p.sort().values, y.sort().values)  # same multiset of labels
    assert (p != y).float().mean() > 0.8
    assert torch.equal(p, permute_labels(y, seed=0))
    assert not torch.equal(p, permute_labels(y, seed=1))


def test_memorization_stops_at_target():
    r = train("mlp", "digits", labels="permuted", train_size=200, epochs=60, target_accuracy=0.9, seed=0,
              lr=1e-3, force=True)   # its history, not a cached one's
    assert r.metrics["memorized"] is True
    assert r.train_accuracy >= 0.9
    assert r.metrics["epochs_run"] < 60
    assert r.history[-1]["train_accuracy"] >= 0.9
    assert all(h.get("train_accuracy", 0.0) < 0.9 for h in r.history[:-1])
    # the whole training set is scored only once the running accuracy is near the target
    from sanitas.models.train import MEASURE_MARGIN

    for h in r.history:
        assert ("train_accuracy" in h) == (h["running_train_accuracy"] >= 0.9 - MEASURE_MARGIN), h
    assert any("train_accuracy" not in h for h in r.history)


def test_unreached_target_is_reported_honestly():
    r = train("linear", "digits", labels="permuted", epochs=1, target_accuracy=0.99, seed=0, cache=False)
    assert r.metrics["memorized"] is False


def test_bad_config_values():
    with pytest.raises(ConfigError):
        train("linear", "digits", labels="shuffled")
    with pytest.raises(ConfigError):
        train("linear", "digits", epochs=0)
    with pytest.raises(ConfigError):
        train("linear", "digits", target_accuracy=95)


def test_training_defaults_scope_trains_on_a_subset_and_ends_with_the_block():
    from sanitas.models import training_defaults

    full = train("linear", "digits", epochs=1, seed=11, cache=False)
    with training_defaults(train_size=300):
        small = train("linear", "digits", epochs=1, seed=11, cache=False)
        explicit = train("linear", "digits", epochs=1, seed=11, train_size=200, cache=False)  # an explicit size wins
        with training_defaults():   # nested: every image again
            inner = train("linear", "digits", epochs=1, seed=11, cache=False)
    assert small.metrics["n_train"] == 300 and small.config["train_size"] == 300
    assert explicit.metrics["n_train"] == 200
    assert inner.metrics["n_train"] == full.metrics["n_train"] > 300
    with pytest.raises(RuntimeError), training_defaults(train_size=300):
        raise RuntimeError("boom")
    after = train("linear", "digits", epochs=1, seed=11, cache=False)   # the scope ended, also after the error
    assert after.metrics["n_train"] == full.metrics["n_train"]
    with pytest.raises(ConfigError, match="train_size"), training_defaults(train_size=0):
        pass
