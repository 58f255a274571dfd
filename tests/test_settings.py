"""Settings read from NESSA_* refuse what the service could not honour."""
from __future__ import annotations

import pytest

from app.settings import Settings


@pytest.mark.models_only
def test_far_target_is_an_operating_point_the_calibrations_carry():
    assert Settings.from_env({}).far_target == 0.01
    assert Settings.from_env({"NESSA_FAR_TARGET": "0.001"}).far_target == 0.001
    with pytest.raises(ValueError, match="NESSA_FAR_TARGET.*0.01, 0.001"):
        Settings.from_env({"NESSA_FAR_TARGET": "0.05"})
