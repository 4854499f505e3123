"""The experiments' figures draw without pyplot: making one leaves the user's matplotlib backend as it was
(a library must not switch a process-wide setting)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import pandas as pd
    import torch
    import matplotlib
    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.experiments import edges, input_noise, shared_zeros

    out = Path(sys.argv[1])
    x = torch.rand(2, 1, 8, 8)
    table = input_noise.input_noise_table(x, resolve_metrics(["spearman_abs"]), noise=(0.5, 2.0), samples=2)
    paths = [input_noise._figure(table, out / "noise.png"),
             edges._figure(x, {"gradient": torch.rand(1, 1, 8, 8)}, out / "edges.png"),
             shared_zeros._figure(pd.DataFrame({"fraction": [0.0, 0.5, 0.0, 0.5], "value": [0.0, 0.8, 0.1, 0.9]}),
                                  pd.DataFrame({"variant": ["output"], "fraction": [0.3], "value": [0.7]}),
                                  out / "zeros.png")]
    assert all(p.stat().st_size > 0 for p in paths), paths
    print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
""")


def test_experiment_figures_leave_the_backend_alone(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "False"]
