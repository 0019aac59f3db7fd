"""Shared pytest configuration: Hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (the default) keeps the whole property suite to a couple of minutes
on two cores; ``HYPOTHESIS_PROFILE=deep`` is for nightly runs (many more examples, no time
pressure). Tests that are expensive per example scale their own ``max_examples`` from the
active profile (see ``scaled`` in the property test modules), so ``deep`` deepens them too.
Tests that pin ``settings(max_examples=...)`` themselves are not affected by the profile.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,  # shared 2-core CI machines: timing noise is not a bug
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,  # a failure prints the @reproduce_failure blob
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
