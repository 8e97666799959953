"""Suite-wide: no test writes into the user's data home (~/.cache/adaptrain/data). Every test
and every CLI subprocess it starts sees $ADAPTRAIN_DATA pointing at a session temp folder;
tests that need their own (tests/test_data.py) set it again."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTRAIN_DATA", str(tmp_path_factory.mktemp("data-home")))
        yield
