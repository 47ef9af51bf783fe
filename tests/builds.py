"""The speedups' two builds as the tests see them: the seam (_speedups) says what is built; this
decides whether a missing native build skips a test or fails it."""

import pytest

import _speedups


def native_or_skip(name):
    """The compiled twin of ``_speedups.<name>``.

    Without one the calling test (or, called at import, the whole module) is skipped, unless
    FLEETPROXY_EXPECT_NATIVE says the build must be there: then it fails, so a native run that
    quietly fell back to pure cannot pass.
    """
    module = _speedups.native(name)
    if module is None:
        reason = f"_speedups.{name}_c is not built ({_speedups.why_not_native(name)})"
        if _speedups.EXPECT_NATIVE:
            pytest.fail(f"FLEETPROXY_EXPECT_NATIVE is set but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return module
