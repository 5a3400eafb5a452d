import numpy as np
import pytest

from medmae.data.intensity import apply_intensity, ct_window, describe, minmax, mri_zscore_nonzero, xray_histeq


def test_ct_window_maps_and_clips():
    hu = np.array([[[-1000.0, -175.0, 37.5, 250.0, 3000.0]]], dtype=np.float32)
    out = ct_window(hu, -175.0, 250.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[0.0, 0.0, 0.5, 1.0, 1.0]]], atol=1e-7)
    np.testing.assert_allclose(apply_intensity(hu, {"name": "ct_window", "lo": -1000, "hi": 1000}),
                               [[[0.0, 0.4125, 0.51875, 0.625, 1.0]]], atol=1e-6)
    with pytest.raises(ValueError, match="lo=10.0, hi=10.0"):
        ct_window(hu, 10.0, 10.0)


def test_mri_zscore_over_nonzero_voxels_per_channel():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 8, 8, 8), np.float32)
    x[0, 2:6, 2:6, 2:6] = rng.normal(300.0, 40.0, (4, 4, 4))
    x[1, 1:7, 1:7, 1:5] = rng.gamma(2.0, 50.0, (6, 6, 4)) + 1.0
    out = mri_zscore_nonzero(x)
    for c in range(2):
        fg = x[c] != 0
        assert abs(out[c][fg].mean()) < 1e-5 and abs(out[c][fg].std() - 1.0) < 1e-5
        assert np.all(out[c][~fg] == 0)
    # each channel is normalised on its own: scaling one channel changes nothing
    x2 = x.copy()
    x2[1] *= 7.0
    np.testing.assert_allclose(mri_zscore_nonzero(x2), out, atol=1e-5)


def test_mri_zscore_empty_and_constant_channels():
    x = np.zeros((2, 4, 4, 4), np.float32)
    x[1, :2] = 5.0
    out = mri_zscore_nonzero(x)
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_xray_histeq_is_uniform_monotone_and_bounded():
    rng = np.random.default_rng(1)
    x = rng.exponential(300.0, (1, 64, 64)).astype(np.float32) + 100.0  # skewed, like raw detector counts
    out = xray_histeq(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.min() < 0.01 and out.max() == 1.0
    hist = np.histogram(out, bins=10, range=(0, 1))[0] / out.size
    assert np.all(np.abs(hist - 0.1) < 0.02), hist
    raw_hist = np.histogram(x, bins=10)[0] / x.size
    assert raw_hist.max() > 0.5  # the input was far from uniform
    order = np.argsort(x.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_xray_histeq_constant_image():
    assert np.all(xray_histeq(np.full((1, 4, 4), 7.0, np.float32)) == 0)


def test_minmax_with_and_without_percentiles():
    x = np.linspace(0.0, 100.0, 101, dtype=np.float32).reshape(1, 101)
    x[0, -1] = 10000.0  # one outlier
    plain = minmax(x)
    assert plain.min() == 0.0 and plain.max() == 1.0 and plain[0, 50] < 0.01
    clipped = minmax(x, (1.0, 99.0))
    lo, hi = np.percentile(x, (1.0, 99.0))
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert np.all(clipped[0, x[0] <= lo] == 0.0) and np.all(clipped[0, x[0] >= hi] == 1.0)
    np.testing.assert_allclose(clipped[0, 50], (50.0 - lo) / (hi - lo), rtol=1e-5)
    spec = {"name": "minmax", "percentiles": [1.0, 99.0]}
    np.testing.assert_array_equal(apply_intensity(x, spec), clipped)
    assert describe(spec) == {"name": "minmax", "percentiles": [1.0, 99.0]}


def test_minmax_scales_each_channel():
    x = np.stack([np.arange(4.0), 10 * np.arange(4.0) - 5]).astype(np.float32)[:, None]
    np.testing.assert_allclose(minmax(x), np.stack([np.arange(4.0) / 3] * 2)[:, None], atol=1e-6)


def test_describe_keeps_only_what_changes_the_output():
    assert describe({"name": "ct_window", "lo": -175, "hi": 250, "percentiles": None}) == {
        "name": "ct_window", "lo": -175.0, "hi": 250.0}
    assert describe({"name": "xray_histeq", "lo": -175.0, "hi": 250.0, "percentiles": None}) == {"name": "xray_histeq"}


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown intensity preset 'gamma'"):
        apply_intensity(np.zeros((1, 2, 2), np.float32), {"name": "gamma"})
