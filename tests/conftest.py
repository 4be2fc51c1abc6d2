"""Fixtures shared by the test modules, and the ``alone`` tests' lock under pytest-xdist."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from tests.alone import ALONE_MODULES, running
from tests.tiny_suite import TINY

# No per-example deadline: on two shared cores (CI runs two xdist workers) an example's time
# says nothing about the code; max_examples stay as each test sets them.
settings.register_profile("bench", deadline=None)
settings.load_profile("bench")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """The tiny suite written to ``tmp_path / "tiny.yaml"``."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of `ALONE_MODULES` ``alone``."""
    for item in items:
        if item.nodeid.split("::")[0] in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Run an ``alone`` test with no other test beside it (`tests.alone`)."""
    workerinput = getattr(item.config, "workerinput", None)
    with running(item.get_closest_marker("alone") is not None, workerinput):
        return (yield)
