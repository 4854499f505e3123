"""Regenerate the README's method support table from the test suite's zoo of architectures.

    .venv/bin/python scripts/support_table.py          # rewrites the <!-- support-table --> section
"""

import os
import re
import sys
from pathlib import Path

os.environ.setdefault("SANITAS_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from zoo import ZOO, built  # noqa: E402

from sanitas.explain.support import check_support, support_markdown  # noqa: E402


def main() -> None:
    rows = {name: check_support(*built(name), output=ZOO[name].output) for name in ZOO}
    table = support_markdown(rows, {n: ZOO[n].family for n in ZOO})
    readme = ROOT / "README.md"
    text = readme.read_text()
    new, n = re.subn(r"(<!-- support-table -->\n).*?(<!-- /support-table -->)", lambda m: m.group(1) + table + "\n"
                     + m.group(2), text, flags=re.S)
    if n != 1:
        raise SystemExit("README.md has no <!-- support-table --> ... <!-- /support-table --> section")
    readme.write_text(new)
    print(table)


if __name__ == "__main__":
    main()
