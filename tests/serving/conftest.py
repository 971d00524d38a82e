"""One tiny exported policy per test session (trained in seconds), and a second one for hot reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.helpers import build_export


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory) -> Path:
    return build_export(tmp_path_factory.mktemp("serve_export"), seed=0)


@pytest.fixture(scope="session")
def second_export(tmp_path_factory) -> Path:
    return build_export(tmp_path_factory.mktemp("serve_export2"), seed=1, epochs=2)
