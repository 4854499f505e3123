"""Same config, seed and environment give byte-identical results tables in two fresh processes, and a
sanitas call leaves the calling process as it found it (also when it raises)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanitas.explain import get_explainer, kernels
from sanitas.utils import memory
from sanitas.utils.hashing import model_fingerprint

# A small model-randomization run: the seeded paper cnn (its one-channel conv1 and 3136->1024 fc1
# are the layers sanitas' CPU kernels take), four methods, two metrics, results written to out=.
# argv: out directory, then the seed of a fake time.perf_counter whose every call advances the clock
# by a random step in [0.5, 1.5): each process sees its own timings, so a kernel chosen by timing
# (as sanitas once did) differs between the two processes.
RUN = r"""
import random, sys, time
out, seed = sys.argv[1], int(sys.argv[2])
steps, clock = random.Random(seed), [0.0]
def fake_perf_counter():
    clock[0] += 0.5 + steps.random()
    return clock[0]
time.perf_counter = fake_perf_counter
import torch
from sanitas.checks import model_randomization
from sanitas.explain import get_explainer
from sanitas.models import build_model
torch.manual_seed(0)
model = build_model("cnn").eval()
g = torch.Generator().manual_seed(1)
x = torch.rand(6, 1, 28, 28, generator=g)
y = torch.randint(0, 10, (6,), generator=g)
methods = {"gradient": "gradient", "ig": get_explainer("integrated_gradients", steps=8),
           "smoothgrad": get_explainer("smoothgrad", samples=4), "guided_backprop": "guided_backprop"}
model_randomization(model, x, y, methods=methods, metrics=["spearman_abs", "ssim"], seed=0, out=out, quiet=True)
"""


def _child_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANITAS_", "MALLOC_", "GLIBC_TUNABLES"))}
    env.update(SANITAS_CACHE=str(tmp_path / "cache"), SANITAS_QUIET="1", SANITAS_OFFLINE="1")
    return env


def _run(code: str, *args, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_fresh_processes_write_byte_identical_results_tables(tmp_path):
    env = _child_env(tmp_path)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, clock_seed in zip(outs, (1, 2)):
        _run(RUN, out, clock_seed, env=env)
    for name in ("results.csv", "results.parquet"):
        a, b = (out / name for out in outs)
        assert a.is_file() and b.is_file(), name
        assert a.read_bytes() == b.read_bytes(), f"{name} differs between two processes"
    tables = sorted(p.name for p in outs[0].iterdir() if p.suffix in (".csv", ".parquet"))
    for name in tables:  # every other table too (meta.json holds timings: it may differ)
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------
# the calling process is left as it was
# ----------------------------------------------------------------------------------------------

def _hooks(model: nn.Module) -> list:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks")
    per_module = [(name, attr, len(getattr(m, attr, {}))) for name, m in model.named_modules() for attr in names]
    from torch.nn.modules import module as torch_module

    global_hooks = [(g, len(getattr(torch_module, g))) for g in dir(torch_module)
                    if g.startswith("_global_") and g.endswith("hooks") and isinstance(getattr(torch_module, g), dict)]
    return per_module + global_hooks


def _process_state(model: nn.Module) -> dict:
    return {
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "threads": torch.get_num_threads(),
        "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "torch_rng": torch.random.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "environ": dict(os.environ),
        "hooks": _hooks(model),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "fingerprint": model_fingerprint(model),
        "memory_depth": memory._depth,
        "memory_held": list(memory._held),
        "changed_malloc": memory.changed_malloc,
    }


def _assert_same(before: dict, after: dict):
    for key, value in before.items():
        other = after[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other), key
        else:
            assert value == other, key


def _no_mode_left(monkeypatch):
    """No TorchFunctionMode of sanitas is still active: F.linear and F.relu run as PyTorch's own."""
    monkeypatch.setattr(kernels, "LINEAR_BACKEND", "onednn")
    calls = []
    monkeypatch.setattr(kernels, "linear_onednn", lambda *a: calls.append(1))
    x = torch.randn(3, 4, requires_grad=True)
    F.linear(x, torch.randn(5, 4)).sum().backward()
    (g,) = torch.autograd.grad(F.relu(x).sum(), x)
    assert not calls and torch.equal(g, (x > 0).float())
    monkeypatch.undo()


class _Net(nn.Module):
    """A small grayscale net (one-channel conv, large linear: both CPU kernels apply) that can be told
    to raise on its n-th forward call."""

    calls = 0
    raise_at: int | None = None

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(16 * 7 * 7, 1024)
        self.fc2 = nn.Linear(1024, 5)

    def forward(self, x):
        type(self).calls += 1
        if type(self).raise_at is not None and type(self).calls >= type(self).raise_at:
            raise RuntimeError("forward failed on purpose")
        return self.fc2(F.relu(self.fc1(self.features(x).flatten(1))))


@pytest.fixture
def net():
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = _Net().eval()
    torch.random.set_rng_state(gen_state)
    _Net.calls, _Net.raise_at = 0, None
    yield model
    _Net.calls, _Net.raise_at = 0, None


METHODS = [("gradient", {}), ("integrated_gradients", {"steps": 4}), ("smoothgrad", {"samples": 3}),
           ("guided_backprop", {}), ("gradcam", {}), ("lrp", {}), ("deeplift", {})]


def _dirty_state():
    """A caller's state that differs from every default sanitas might fall back to."""
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    torch.set_num_threads(1)


def test_explanations_leave_the_process_as_they_found_it(net, monkeypatch):
    _dirty_state()
    x = torch.rand(4, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            before = _process_state(net)
            for name, opts in METHODS:
                get_explainer(name, **opts)(net, x, 1)
            get_explainer("gradient")(net, x, "all")
            _assert_same(before, _process_state(net))
    _no_mode_left(monkeypatch)


def _forwards(call) -> int:
    """How many forward calls of _Net ``call()`` makes (after a first call that fills per-model caches)."""
    _Net.raise_at = None
    call()
    _Net.calls = 0
    call()
    return _Net.calls


def test_an_explanation_that_raises_leaves_the_process_as_it_found_it(net, monkeypatch):
    _dirty_state()
    x = torch.rand(4, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    before = _process_state(net)
    for name, opts in METHODS:
        explainer = get_explainer(name, **opts)
        n = _forwards(lambda: explainer(net, x, 1))
        _Net.calls, _Net.raise_at = 0, n  # its last forward (inside the passes) raises
        with pytest.raises(Exception, match="on purpose"):
            explainer(net, x, 1)
        _Net.raise_at = None
    _assert_same(before, _process_state(net))
    _no_mode_left(monkeypatch)


def test_a_check_leaves_the_process_as_it_found_it_also_when_it_raises(net, tmp_path, monkeypatch):
    from sanitas.checks import model_randomization

    _dirty_state()
    x = torch.rand(4, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    methods = {"g": "gradient", "ig": get_explainer("integrated_gradients", steps=4)}
    before = _process_state(net)
    model_randomization(net, x, y, methods=methods, metrics=["spearman_abs", "ssim"], out=tmp_path / "ok", quiet=True)
    _assert_same(before, _process_state(net))
    n = _forwards(lambda: model_randomization(net, x, y, methods=methods, metrics=["spearman_abs"], quiet=True))
    _Net.calls, _Net.raise_at = 0, n // 2  # some cells are done, then a stage's explanation fails
    with pytest.raises(Exception, match="on purpose"):
        model_randomization(net, x, y, methods=methods, metrics=["spearman_abs"], out=tmp_path / "bad", quiet=True)
    _Net.raise_at = None
    _assert_same(before, _process_state(net))
    _no_mode_left(monkeypatch)


def test_malloc_is_never_tuned_by_default_and_reserves_are_freed(net, monkeypatch):
    """By default not one mallopt call, in an explanation or a check, also when the call raises; the
    check's heap reserve (sanitas.utils.memory) is freed again, and its own state is back to zero."""
    from sanitas.checks import model_randomization

    calls = []
    real = memory.glibc()
    if real is None:
        pytest.skip("needs glibc")
    spy = type("Spy", (), {
        "mallopt": lambda self, *a: calls.append(("mallopt", *a)) or 1,
        "malloc": lambda self, n: calls.append(("malloc", n)) or real.malloc(n),
        "free": lambda self, p: calls.append(("free", p)) or real.free(p),
        "mallinfo2": lambda self: real.mallinfo2()})()
    monkeypatch.setattr(memory, "glibc", lambda: spy)
    monkeypatch.setattr(memory, "MODE", memory.mode_from_env({}))
    x, y = torch.rand(2, 1, 14, 14), torch.tensor([0, 1])
    get_explainer("integrated_gradients", steps=4)(net, x, 1)
    model_randomization(net, x, y, methods=["gradient"], metrics=["spearman"], quiet=True)
    n = _forwards(lambda: model_randomization(net, x, y, methods=["gradient"], metrics=["spearman"], quiet=True))
    _Net.calls, _Net.raise_at = 0, n // 2
    with pytest.raises(Exception, match="on purpose"):
        model_randomization(net, x, y, methods=["gradient"], metrics=["spearman"], quiet=True)
    _Net.raise_at = None
    kinds = [c[0] for c in calls]
    assert "mallopt" not in kinds and memory.changed_malloc is False
    assert kinds.count("malloc") == kinds.count("free") > 0  # every reserve block was freed
    assert memory._depth == 0 and memory._held == []


# glibc's mmap threshold, observed from outside: a fresh process mallocs 31 MiB and asks mallinfo2()
# how many mmapped blocks are live. glibc's adaptive threshold starts at 128 KiB, so the block is
# mmapped unless something fixed the threshold higher (sanitas' process-wide opt-in sets it to 32 MiB).
PROBE = r"""
import ctypes, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "call":
    import torch
    from sanitas.checks import model_randomization
    from sanitas.explain import get_explainer
    from sanitas.models import build_model
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    x = torch.rand(4, 1, 28, 28)
    get_explainer("integrated_gradients", steps=8)(model, x, 1)
    model_randomization(model, x, torch.tensor([0, 1, 2, 3]), methods=["gradient"], metrics=["spearman"], quiet=True)
    from sanitas.utils import memory
    changed = memory.changed_malloc
else:
    changed = False
before = libc.mallinfo2().hblks
p = libc.malloc(31 * 2**20)
mmapped = libc.mallinfo2().hblks > before
libc.free(p)
print(json.dumps({"mmapped": mmapped, "changed": changed}))
"""


@pytest.mark.slow
def test_a_fresh_process_keeps_glibcs_malloc_settings(tmp_path):
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc 2.33+
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    env = _child_env(tmp_path)
    untouched = json.loads(_run(PROBE, "none", env=env).strip().splitlines()[-1])
    after = json.loads(_run(PROBE, "call", env=env).strip().splitlines()[-1])
    opted_in = json.loads(_run(PROBE, "call", env={**env, "SANITAS_HOLD_MEMORY": "process"}).strip().splitlines()[-1])
    assert untouched == {"mmapped": True, "changed": False}
    assert after == untouched  # the default: glibc's state is what it was without sanitas
    assert opted_in == {"mmapped": False, "changed": True}  # the probe sees the opt-in's fixed threshold
