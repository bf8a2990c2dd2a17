"""Shared pytest setup.

``tests/`` is put on ``sys.path`` so that suites can ``import helpers_engine``
(the shared engine-test helpers) whatever pytest's import mode is.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


# -- HTTP service fixtures (tests/test_http_*.py) --------------------------------
#
# A real Service on a real data dir in tmp_path, real API keys, and an aiohttp
# test client over a real socket: no mocks anywhere.

import pytest  # noqa: E402
import pytest_asyncio  # noqa: E402

from engine.datadir import DataDir  # noqa: E402
from engine.settings import StoreSettings  # noqa: E402
from query.service import Service, ServiceSettings  # noqa: E402

HTTP_NODE = "node-a"


@pytest.fixture
def make_service(tmp_path):
    """``make_service(store=..., settings=..., name=...)`` -> an open Service on a fresh
    data dir under tmp_path (node ``node-a``); every one is closed at teardown."""
    made: list[Service] = []

    def make(store: StoreSettings | None = None, settings: ServiceSettings | None = None,
             name: str = "data") -> Service:
        dd = DataDir(tmp_path / name)
        dd.init(HTTP_NODE)
        svc = Service(dd, dd.open(), store or StoreSettings(fsync="none"),
                      settings or ServiceSettings()).open()
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
    from query.app import create_app

    async def make(service: Service):
        return await aiohttp_client(create_app(service))

    return make


@pytest_asyncio.fixture
async def client(make_client, service):
    return await make_client(service)


# -- test outcome on the item (tests/test_ui.py saves screenshots on failure) -----

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report as ``item.rep_setup`` / ``rep_call`` / ``rep_teardown``,
    so a fixture's teardown can tell whether its test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
