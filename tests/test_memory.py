"""sanitas.utils.memory: a heap reserve for a check's scope by default (no malloc setting touched),
glibc's thresholds only when the user opts in, nothing at all when turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from sanitas.explain import get_explainer
from sanitas.utils import memory


class _FakeGlibc:
    """Records mallopt/malloc/free; hands out increasing addresses. ``mmaps_from`` > 0 plays a
    glibc whose mmap threshold the user lowered: every malloc is then mmapped."""

    def __init__(self, mmaps_from: int = 0):
        self.calls, self.live, self.next, self.hblks, self.mmaps = [], set(), 4096, 0, mmaps_from

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc(self, size):
        self.next += size + 16
        self.live.add(self.next)
        self.hblks += bool(self.mmaps)
        self.calls.append(("malloc", size))
        return self.next

    def free(self, ptr):
        self.live.remove(ptr)
        self.calls.append(("free", ptr))

    def mallinfo2(self):
        return type("Info", (), {"hblks": self.hblks})()

    def count(self, kind):
        return sum(c[0] == kind for c in self.calls)


@pytest.fixture
def fake(monkeypatch):
    lib = _FakeGlibc()
    monkeypatch.setattr(memory, "glibc", lambda: lib)
    monkeypatch.setattr(memory, "changed_malloc", False)
    monkeypatch.setattr(memory, "MODE", "scope")
    return lib


def _net():
    g = torch.random.get_rng_state()
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 12, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(12 * 7 * 7, 5)).eval()
    torch.random.set_rng_state(g)
    return net


def test_a_scope_reserve_keeps_the_highest_block_and_frees_it_at_the_end(fake):
    n = 10 * memory.RESERVE_BLOCK
    with memory.hold_freed_memory("cpu", reserve=n):
        assert fake.count("malloc") == 10 and fake.count("free") == 9 and fake.count("mallopt") == 0
        assert fake.live == {fake.next}  # the highest block stays allocated: the freed ones lie below it
        with memory.hold_freed_memory("cpu", reserve=n):  # nested scopes change nothing
            pass
        assert fake.count("malloc") == 10 and len(fake.live) == 1
    assert fake.live == set() and memory._depth == 0 and memory._held == []
    with pytest.raises(ValueError), memory.hold_freed_memory("cpu", reserve=n):  # freed on errors too
        raise ValueError
    assert fake.live == set() and memory._depth == 0 and memory.changed_malloc is False


def test_no_reserve_under_a_lowered_mmap_threshold(fake):
    fake.mmaps = 1  # the first block is mmapped: blocks would not come from the heap
    with memory.hold_freed_memory("cpu", reserve=10 * memory.RESERVE_BLOCK):
        assert fake.count("malloc") == 1 and fake.live == set()
    assert memory._depth == 0


def test_the_process_wide_opt_in_sets_and_relaxes_glibcs_thresholds(fake, monkeypatch):
    monkeypatch.setattr(memory, "MODE", "process")
    with memory.hold_freed_memory("cpu", reserve=0):  # a single explanation too
        assert fake.calls == [("mallopt", memory.M_MMAP_THRESHOLD, 32 * 2**20),
                              ("mallopt", memory.M_TRIM_THRESHOLD, memory.HOLD_BYTES)]
        with memory.hold_freed_memory():
            pass
        assert len(fake.calls) == 2
    assert fake.calls[2:] == [("mallopt", memory.M_TRIM_THRESHOLD, 64 * 2**20)] and memory.changed_malloc
    with pytest.raises(ValueError), memory.hold_freed_memory():
        raise ValueError
    assert fake.calls[-1] == ("mallopt", memory.M_TRIM_THRESHOLD, 64 * 2**20) and memory._depth == 0


def test_explanations_hold_nothing_and_a_check_holds_one_reserve(fake, monkeypatch):
    from sanitas.checks import model_randomization

    net, x, y = _net(), torch.rand(2, 1, 14, 14), torch.tensor([1, 2])
    get_explainer("integrated_gradients", steps=4)(net, x, 1)
    assert fake.calls == []  # one call: the reserve would cost more than it saves
    model_randomization(net, x, y, methods=["gradient", "gradcam"], metrics=["spearman"], quiet=True)
    blocks = memory.RUN_RESERVE // memory.RESERVE_BLOCK
    assert fake.count("malloc") == blocks and fake.count("free") == blocks and fake.count("mallopt") == 0
    assert fake.live == set()
    for mode in ("off", "process"):
        monkeypatch.setattr(memory, "MODE", mode)
        fake.calls.clear()
        model_randomization(net, x, y, methods=["gradient", "gradcam"], metrics=["spearman"], quiet=True)
        assert fake.count("malloc") == 0
        assert fake.count("mallopt") == (3 if mode == "process" else 0)  # one scope around all cells


def test_modes_from_the_environment():
    assert memory.mode_from_env({}) == "scope" and memory.mode_from_env({"SANITAS_HOLD_MEMORY": "1"}) == "scope"
    assert memory.mode_from_env({"SANITAS_HOLD_MEMORY": " Process "}) == "process"
    assert all(memory.mode_from_env({"SANITAS_HOLD_MEMORY": v}) == "off" for v in ("0", "off", "FALSE", "no"))
    assert memory.mode_from_env({"SANITAS_HOLD_MEMORY": "process", "MALLOC_TRIM_THRESHOLD_": "1"}) == "off"


def test_malloc_settings_of_the_user_are_left_alone():
    assert not memory._user_tunes_malloc({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert memory._user_tunes_malloc({"MALLOC_TRIM_THRESHOLD_": "1"})
    assert memory._user_tunes_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"})


def test_accelerators_and_other_c_libraries_get_a_no_op(fake, monkeypatch):
    with memory.hold_freed_memory("meta"):  # accelerators keep their own allocator
        assert memory._depth == 0
    monkeypatch.setattr(memory, "glibc", lambda: None)
    with memory.hold_freed_memory("cpu"):
        assert memory._depth == 0
    assert fake.calls == []


def test_the_real_glibc_lookup():
    lib = memory.glibc()
    assert lib is None or (hasattr(lib, "mallopt") and hasattr(lib, "malloc") and hasattr(lib, "free"))


# Passes of 48 x 1 MiB tensors in a fresh process, with and without a reserve around them: glibc
# returns the freed heap top after every pass and the next pass faults it back in, unless the
# memory lies below the reserve's live block.
PASSES = r"""
import json, resource, sys, torch
from sanitas.utils import memory
def passes():
    out = []
    for _ in range(4):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ts = [torch.ones(256 * 1024) for _ in range(48)]
        del ts
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out
if sys.argv[1] == "reserve":
    with memory.hold_freed_memory("cpu"):
        print(json.dumps(passes()))
else:
    print(json.dumps(passes()))
"""


@pytest.mark.slow
def test_the_reserve_keeps_freed_memory_mapped_with_the_real_glibc():
    import json
    import os

    lib = memory.glibc()
    if lib is None or memory.mmapped_blocks(lib) is None:
        pytest.skip("needs glibc 2.33+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANITAS_HOLD", "MALLOC_", "GLIBC_TUNABLES"))}
    faults = {}
    for how in ("none", "reserve"):
        done = subprocess.run([sys.executable, "-c", PASSES, how], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        faults[how] = json.loads(done.stdout.strip().splitlines()[-1])
    later = {how: sum(f[1:]) for how, f in faults.items()}  # the first pass faults its memory in either way
    assert later["reserve"] * 4 < later["none"], faults
