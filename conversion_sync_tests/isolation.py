"""A pytest plugin: each test session gets a temporary directory of its own.

pytest's default numbered directories (/tmp/pytest-of-USER/pytest-N) are shared by every session of the
user, and each session deletes all but the newest three: two `make test` runs side by side (or CI beside a
developer's run) deleted each other's embedded Postgres data directories. A session's own directory is
removed when it passes and kept (its path printed) when it fails, for post-mortems.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

_OWN_BASETEMP = "_conversion_sync_own_basetemp"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="conversion-sync-tests-")
        setattr(config, _OWN_BASETEMP, config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    own = getattr(session.config, _OWN_BASETEMP, None)
    if own is None:
        return
    if exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)
    else:
        print(f"\ntest files kept in {own}")
