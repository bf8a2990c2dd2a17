"""Shared pytest setup.

``tests/`` is put on ``sys.path`` so that suites can ``import helpers_engine``
(the shared engine-test helpers) whatever pytest's import mode is.

Time is frozen for everything that runs in the test process: ``engine.clock``
starts at :data:`TEST_EPOCH_US` (2026-03-14T09:00:00Z) and moves 1 ms per reading,
so no test depends on today's date.  A test that needs time to pass advances
the ``frozen_clock`` fixture.  Programs the tests start as subprocesses (the
CLI, servers, peers) keep the system clock: their own stamps and relative
times agree with each other whatever the date.  The epoch lies before any day
the suite runs on, so where one log gets entries from both (an in-process
writer, then a subprocess), time still only moves forward.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


import pytest  # noqa: E402

from auditlog.engine import clock as _clock  # noqa: E402

#: the instant in-process time starts at in every test
TEST_EPOCH_US = 1_773_478_800_000_000  # 2026-03-14T09:00:00Z


@pytest.fixture(scope="session", autouse=True)
def _session_clock():
    """Installed before any other fixture (module-scoped logs included): one clock for
    the whole test process, moving forward only, so logs built early and tests run
    later never see time go back."""
    fc = _clock.FrozenClock(TEST_EPOCH_US, step_us=1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_clock, "now_us", fc)
        yield fc


@pytest.fixture
def frozen_clock(_session_clock) -> _clock.FrozenClock:
    """The test process's clock (``advance(us)`` to let time pass)."""
    return _session_clock


@pytest.fixture
def written(tmp_path):
    """A log with 20 events (``helpers_engine.draft`` 0..19) in one active segment,
    two per commit, one frame each (the torn-tail and recovery suites)."""
    from helpers_engine import draft, init_dir, settings

    from auditlog.engine.writer import LogWriter

    dd, node = init_dir(tmp_path / "data")
    with LogWriter(dd, node, settings(1 << 20)) as w:
        for i in range(0, 20, 2):
            w.append_batch([draft(i), draft(i + 1)])
    return dd, node


# -- HTTP service fixtures (tests/test_http_*.py) --------------------------------
#
# A real node (query.node.build_node) on a real data dir in tmp_path, real API keys, and an aiohttp
# test client over a real socket: no mocks anywhere.

import pytest_asyncio  # noqa: E402

from auditlog.engine.datadir import DataDir  # noqa: E402
from auditlog.engine.settings import StoreSettings  # noqa: E402
from auditlog.query.node import NodeConfig, RunningNode, ServiceSettings, build_node  # noqa: E402

HTTP_NODE = "node-a"


@pytest.fixture
def make_service(tmp_path):
    """``make_service(store=..., settings=..., name=..., cluster=..., syslog=...)`` -> an
    open node (``build_node``) on a fresh data dir under tmp_path (node ``node-a``); its
    cluster and syslog forwarder run while a client of it runs; every one is closed at
    teardown."""
    made: list[RunningNode] = []

    def make(
        store: StoreSettings | None = None,
        settings: ServiceSettings | None = None,
        name: str = "data",
        cluster=None,
        syslog=None,
    ) -> RunningNode:
        dd = DataDir(tmp_path / name)
        dd.init(HTTP_NODE)
        svc = build_node(
            NodeConfig(store or StoreSettings(fsync="none"), settings or ServiceSettings(), cluster, syslog), dd
        )
        made.append(svc)
        return svc

    yield make
    for svc in reversed(made):
        svc.close()


@pytest.fixture
def service(make_service):
    return make_service()


@pytest.fixture
def keys(service) -> dict[str, str]:
    """{"writer"|"reader"|"admin"|"revoked": key} on the ``service`` fixture."""
    from helpers_http import make_keys

    return make_keys(service)


@pytest_asyncio.fixture
async def make_client(make_service, aiohttp_client):
    """``await make_client(service)`` -> an aiohttp test client serving create_app(service).

    make_service is set up first, so the clients are closed before the services."""
    from auditlog.query.http.app import create_app

    async def make(service: RunningNode):
        return await aiohttp_client(create_app(service))

    return make


@pytest_asyncio.fixture
async def client(make_client, service):
    return await make_client(service)


# -- a real S3-compatible server (tests/test_archive.py, tests/test_holds.py) -------


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """SeaweedFS's S3 gateway (``helpers_s3.SeaweedS3``), one per test process."""
    from helpers_s3 import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def locked_bucket(s3):
    """One bucket with Object Lock per test process (each bucket takes volumes of its own
    in SeaweedFS); every test archives under a prefix of its own."""
    import os

    return s3.bucket(f"locked-{os.getpid()}")


@pytest.fixture(scope="session")
def plain_bucket(s3):
    import os

    return s3.bucket(f"plain-{os.getpid()}", lock=False)


# -- test outcome on the item (tests/test_ui.py saves screenshots on failure) -----


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report as ``item.rep_setup`` / ``rep_call`` / ``rep_teardown``,
    so a fixture's teardown can tell whether its test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
