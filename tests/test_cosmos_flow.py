"""The COSMOS HST + HSC field: what HST detection alone finds.

The fits of the field run elsewhere, once each: the joint-detection flow (HST, then what
only HSC sees: a galaxy on the bottom edge of the HSC image) is the tutorial
``02_multi_observation``, whose numbers ``test_tutorials.py`` checks (conditional Laplace
not off-mode, marginal error bars never narrower than conditional ones, every native
band at chi2/dof <= 1.5, the decrement of the fit); ``benchmarks/map_fit.py`` fits both
detections (HST alone, and joint) with Adam for comparison and the model-independent
shift of ``measure.template_shift``; ``docs/inference.md`` discusses them. The
HST-detection fit was a test of its own until it cost 14 of the suite's 53 minutes
(200 Newton steps, stopping at decrement 0.61) for criteria the tutorial's joint fit
checks more strictly.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from scipy import ndimage

import mobs_ppl as mp

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def cosmos(shared_data_dir):
    hst, hsc = mp.datasets.load_cosmos(shared_data_dir)
    return hst, hsc


def _hsc_peaks(hsc, n=3):
    """The ``n`` brightest local maxima ``(y, x)`` of the smoothed HSC i-band image."""
    image = ndimage.gaussian_filter(np.asarray(hsc.data[hsc.channels.index("i")]), 1.0)
    maxima = image == ndimage.maximum_filter(image, size=5)
    ys, xs = np.nonzero(maxima)
    order = np.argsort(-image[ys, xs])[:n]
    return [(int(ys[k]), int(xs[k])) for k in order]


def test_hst_detections_cover_the_hsc_galaxies_without_shredding(cosmos):
    hst, hsc = cosmos
    detections = mp.detection.detect_sources(hst, "space", split_peaks=False)
    centres = hst.frame.pixel_to_sky(*np.array([d.center for d in detections]).T)
    for y, x in _hsc_peaks(hsc):
        separation = centres.separation(hsc.frame.pixel_to_sky(y, x)).to_value(u.arcsec)
        print(f"HSC i-band peak ({y}, {x}): nearest HST detection {separation.min():.3f} arcsec")
        assert separation.min() < 0.5
    # shredding: the knots of one compact galaxy made five sources within 0.3" before
    # the dip test (detection.DEBLEND_SIGMA); the closest distinct pair is 0.61" apart
    pairs = centres[:, None].separation(centres[None, :]).to_value(u.arcsec)
    closest = np.min(pairs[np.triu_indices(len(detections), 1)])
    print(f"\n{len(detections)} HST detections; closest pair {closest:.2f} arcsec")
    assert len(detections) >= 5
    assert closest > 0.3
