"""Every store runs the whole contract suite, under asyncio and trio."""

from __future__ import annotations

import pytest

from conveyor.testing import ContractCheck, contract_checks

from .conftest import StoreFactoryT

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("check", contract_checks(), ids=lambda check: check.name)
async def test_contract(check: ContractCheck, store_factory: StoreFactoryT) -> None:
    async with store_factory() as fixture:
        await check(fixture)
