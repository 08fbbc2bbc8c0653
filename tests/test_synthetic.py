"""The demo's simulated field: well-formed observations whose light matches the truth."""

import numpy as np
import pytest

import mobs_ppl as mp
from mobs_ppl.synthetic import simulated_field


def test_field_is_well_formed_and_reproducible():
    field = simulated_field(3)
    again = simulated_field(3)
    np.testing.assert_array_equal(np.asarray(field.hsc.data), np.asarray(again.hsc.data))
    assert not np.array_equal(np.asarray(field.hsc.data), np.asarray(simulated_field(4).hsc.data))
    assert list(field.hst.channels) == ["F814W"]
    assert list(field.hsc.channels) == ["g", "r", "i", "z", "y"]
    assert field.fluxes.shape == (4, 6) and np.all(field.fluxes > 0)
    for obs in (field.hst, field.hsc):
        np.testing.assert_allclose(np.asarray(obs.psf).sum(axis=(1, 2)), 1.0, rtol=1e-12)
    frame = mp.Frame.from_observations([field.hst, field.hsc], coverage="union")
    assert frame.shape[0] == 6


@pytest.mark.parametrize("seed", [0, 1])
def test_image_sums_match_the_true_fluxes_within_the_noise(seed):
    # galaxies lie within 0.8" + 0.1" of the centre, the images reach 1.5" (HST) and
    # 1.85" (HSC); the light beyond the HST edge (wings of the Sersic-4 bulges and the
    # exponential disks) is at most a few per cent, so the HST sum is checked to 6 %
    field = simulated_field(seed)
    for obs, bands, tolerance in ((field.hst, [0], 0.06), (field.hsc, range(1, 6), 0.04)):
        data = np.asarray(obs.data)
        sd = 1 / np.sqrt(np.asarray(obs.weights)[:, 0, 0])
        noise_of_sum = sd * np.sqrt(data[0].size)
        expected = field.fluxes[:, list(bands)].sum(axis=0)
        measured = data.sum(axis=(1, 2))
        assert np.all(np.abs(measured - expected) < tolerance * expected + 5 * noise_of_sum)
        assert np.all(measured < expected + 5 * noise_of_sum)  # no light is invented


def test_ground_noise_needs_one_value_per_band():
    with pytest.raises(ValueError, match="one sd per band"):
        simulated_field(0, ground_noise=(0.01, 0.01))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_free_template_shift_recovers_the_true_shift(seed):
    # the simulator's shift convention (where sources appear minus where the WCS puts
    # them, native HSC px) against the package's model-free cross-check; measured
    # |error| <= 0.5 sd on these seeds, asserted at 3 sd
    field = simulated_field(seed)
    estimate = mp.measure.template_shift(field.hst, field.hsc, channels=["i", "z", "y"])
    assert np.all(np.abs(estimate.shift - field.true_shift_native) < 3 * estimate.sd)
