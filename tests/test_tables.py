"""The one CSV writer (tables.write_csv): floats at a fixed number of significant digits, so float noise
below that precision leaves the file's bytes unchanged while real changes stay visible; integers,
strings, booleans, NaN and inf come back as they went in."""
import numpy as np
import pandas as pd
import pytest

from tg_utils.tables import SIGNIFICANT_DIGITS, format_float, load_table, save_table, write_csv


def test_rounding_hides_noise_below_its_precision_and_keeps_changes_above(tmp_path):
    base = pd.DataFrame({"value": [1 / 3, 2.718281828459045, 123.456789, 4.2e-7]})
    noisy = base * (1 + 1e-9)                    # float noise: far below the 6th significant digit
    moved = base * (1 + 3e-5)                    # a change above one unit in the 6th digit of each value
    a, b, c = (write_csv(df, tmp_path / f"{n}.csv").read_bytes() for n, df in
               (("a", base), ("b", noisy), ("c", moved)))
    assert a == b
    assert a.decode().splitlines()[1:] == ["0.333333", "2.71828", "123.457", "4.2e-07"]
    old, new = a.decode().splitlines()[1:], c.decode().splitlines()[1:]
    assert all(o != n for o, n in zip(old, new)), (old, new)


def test_written_values_are_within_half_a_unit_of_the_last_digit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000)
    back = pd.read_csv(write_csv(pd.DataFrame({"x": x}), tmp_path / "x.csv"))["x"].to_numpy()
    unit = 10.0 ** (np.floor(np.log10(np.abs(x))) - (SIGNIFICANT_DIGITS - 1))
    assert np.all(np.abs(back - x) <= 0.5 * unit * (1 + 1e-9))
    assert np.any(back != x)                     # it did round


def test_digits_argument(tmp_path):
    df = pd.DataFrame({"v": [0.123456789]})
    assert write_csv(df, tmp_path / "a.csv", digits=3).read_text().splitlines()[1] == "0.123"
    assert write_csv(df, tmp_path / "b.csv", digits=9).read_text().splitlines()[1] == "0.123456789"
    with pytest.raises(ValueError, match="digits must be an integer from 1 to 17"):
        write_csv(df, tmp_path / "c.csv", digits=0)


def test_integers_strings_bools_nan_and_inf_round_trip(tmp_path):
    df = pd.DataFrame({"i": [2**62, -3], "s": ["llama-preln", "1.23456789"], "b": [True, False],
                       "f": [np.nan, np.inf], "g": [-np.inf, 0.5],
                       "counts": [134515008.0, np.nan],      # an integer column with a gap is float in pandas
                       "mixed": ["text", 0.123456789]})       # a float inside an object column is rounded too
    path = write_csv(df, tmp_path / "t.csv")
    back = pd.read_csv(path)
    assert back["i"].tolist() == [2**62, -3] and back["i"].dtype == np.int64
    assert back["s"].tolist() == ["llama-preln", "1.23456789"]
    assert back["b"].tolist() == [True, False]
    assert np.isnan(back["f"][0]) and back["f"][1] == np.inf
    assert back["g"][0] == -np.inf and back["g"][1] == 0.5
    assert back["counts"][0] == 134515008.0 and np.isnan(back["counts"][1])
    assert back["mixed"].tolist() == ["text", "0.123457"]
    assert path.read_text().splitlines()[1:] == [
        "4611686018427387904,llama-preln,True,,-inf,134515008.0,text",
        "-3,1.23456789,False,inf,0.5,,0.123457"]


def test_integral_floats_stay_floats():
    assert [format_float(v) for v in (3.0, -0.0, 1e20, 123456.7, 1e-5)] == ["3.0", "-0.0", "1e+20", "123457.0",
                                                                          "1e-05"]


def test_save_table_writes_through_the_writer(tmp_path):
    df = pd.DataFrame({"model": ["m"], "layer": [1], "value": [np.pi]})
    path = save_table(df, "03_geometry_metrics", "t", tmp_path)
    assert path.read_text() == "model,layer,value\nm,1,3.14159\n"
    assert load_table("03_geometry_metrics", "t", tmp_path)["value"][0] == 3.14159
