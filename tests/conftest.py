"""Suite-wide: no test writes into the user's data home (~/.cache/adaptrain/data). Every test
and every CLI subprocess it starts sees $ADAPTRAIN_DATA pointing at a session temp folder;
tests that need their own (tests/test_data.py) set it again. And ``auto`` precision is fp32."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTRAIN_DATA", str(tmp_path_factory.mktemp("data-home")))
        # amp / channels_last "auto" stay fp32 on a CPU with native bf16 too: the golden weights
        # and the exact agreements (two ranks = one process, resume = uninterrupted) are fp32
        # algebra; tests of the bf16 path ask for it (amp=bf16) or patch the hardware probe
        mp.setenv("ADAPTRAIN_AUTO_BF16", "0")
        yield
