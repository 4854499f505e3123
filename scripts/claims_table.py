"""Print a reproduce run's claims table as Markdown (what the README's claims section holds).

    python scripts/claims_table.py DIR/claims.csv > table.md
"""

from __future__ import annotations

import math
import sys

import pandas as pd


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _short(text: str, width: int = 90) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters (with "..." where it was cut)."""
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + "..."


def markdown(claims: pd.DataFrame) -> str:
    rows = ["| claim | paper | statement | measured [95% CI] | n (excluded) | verdict |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in claims.itertuples(index=False):
        measured = _num(r.measured)
        if measured and not math.isnan(r.ci_low):
            measured += f" [{_num(r.ci_low)}, {_num(r.ci_high)}]"
        n = "" if pd.isna(r.n) else f"{int(r.n)}" + (f" ({int(r.excluded)})" if r.excluded and not pd.isna(r.excluded)
                                                    else "")
        why = str(r.why).removeprefix("skipped: ")
        verdict = r.verdict if r.verdict != "not run" else f"not run ({_short(why)})"
        statement = str(r.claim).replace("|", "\\|")
        rows.append(f"| {r.id} | {r.paper} | {statement} | {measured} | {n} | {verdict} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(pd.read_csv(sys.argv[1])))
