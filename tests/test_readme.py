"""The README's worked examples run as written (issue 20): a user's own nn.Module file, trained by the user and
checked by sanitas, and an image folder laid out as train/ and test/ with class folders."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sanitas
from sanitas.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-example: (?P<kind>[\w .-]+) -->\s*```\w*\n(?P<code>.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    return [(m.group("kind").strip(), m.group("code")) for m in _BLOCK.finditer(README.read_text())]


def commands(code: str) -> list[list[str]]:
    """The `sanitas ...` command lines of a sh block (continuation lines joined, trailing comments dropped)."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "sanitas", line
            out.append(words[1:])
    return out


def _photos(root: Path) -> None:
    """What the README's photos/ stands for: train/ and test/ with a folder per class (small RGB images)."""
    from skimage import io

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
                img[2:10, 2:10, c] = 220  # the class is the colour of a square
                io.imsave(folder / f"{i}.png", img, check_contrast=False)


@pytest.mark.slow
def test_readme_worked_examples_run(tmp_path, monkeypatch):
    blocks = examples()
    assert [k for k, _ in blocks] == ["file mymodels.py", "python", "sh", "sh"]
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path / "photos")
    env = {**os.environ, "PYTHONPATH": str(Path(sanitas.__file__).parents[1])}
    for kind, code in blocks:
        if kind.startswith("file "):
            (tmp_path / kind.split(" ", 1)[1]).write_text(code)
        elif kind == "python":
            subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
        else:
            for args in commands(code):
                r = CliRunner().invoke(main, args)
                assert r.exit_code == 0, f"sanitas {shlex.join(args)}:\n{r.output}"
                assert "Traceback" not in r.output
    assert (tmp_path / "out" / "smallnet" / "report.html").is_file()
    assert (tmp_path / "out" / "smallnet-data" / "report.html").is_file()
    photos = (tmp_path / "out" / "photos" / "report.html").read_text()
    assert "classes 0 dog, 1 cat (classes= as given)" in photos
