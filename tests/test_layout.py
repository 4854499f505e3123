"""The source layout stays easy to carry on: no file under src/ (code, configs, templates) longer than
MAX_LINES lines."""

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400

#: Files allowed to be longer for now, each with its reason; drop an entry once the file is split
#: (test_allowlist_is_current then insists on it).
ALLOWED: dict[str, str] = {}


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def _sources() -> list[Path]:
    """Every file under src/ but compiled bytecode and packaging metadata."""
    return sorted(p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo") and not any(d.endswith(".egg-info") for d in p.parts))


def test_no_source_file_is_too_long():
    assert _sources(), f"no source files found under {SRC}"
    long = {p.relative_to(SRC).as_posix(): _lines(p) for p in _sources() if _lines(p) > MAX_LINES}
    unexpected = {name: n for name, n in long.items() if name not in ALLOWED}
    assert not unexpected, (f"source files over {MAX_LINES} lines: {unexpected}; split them by concern "
                            "(computation, statistics, figures in report/, HTML in report/)")


def test_allowlist_is_current():
    stale = [name for name in ALLOWED if not (SRC / name).is_file() or _lines(SRC / name) <= MAX_LINES]
    assert not stale, f"{stale} are no longer over {MAX_LINES} lines (or gone): remove them from ALLOWED"
