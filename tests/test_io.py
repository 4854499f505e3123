"""Atomic writes of result tables."""

import os

import pandas as pd
import pytest

from sanitas.utils.io import atomic_write_table


def test_atomic_write_table_round_trips_parquet_and_csv(tmp_path):
    t = pd.DataFrame({"method": ["a", "b"], "value": [0.5, float("nan")], "image": [0, 1]})
    atomic_write_table(tmp_path / "t.parquet", t)
    atomic_write_table(tmp_path / "t.csv", t)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), t)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), t)
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "t.parquet"]  # no temporary files left behind
    with pytest.raises(ValueError, match=".parquet or .csv"):
        atomic_write_table(tmp_path / "t.xlsx", t)
