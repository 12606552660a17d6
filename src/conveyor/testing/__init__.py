"""Test tools for store authors: the contract suite and the state machine.

Every built-in store passes exactly these; a third-party store runs them by supplying a
:data:`StoreFactory`::

    @asynccontextmanager
    async def my_store():
        clock = ManualClock()
        async with MyStore(clock=clock) as store:
            async def advance(seconds: float) -> None:
                clock.advance(seconds)
            yield StoreFixture(store, advance)

    await check_store(my_store)

Nothing here imports a test runner. The hypothesis state machine lives in
:mod:`conveyor.testing.state_machine` (it needs ``hypothesis``).
"""

from conveyor.store import ManualClock as ManualClock

from ._contract import ContractCheck as ContractCheck
from ._contract import check_store as check_store
from ._contract import contract_checks as contract_checks
from ._harness import ContractViolation as ContractViolation
from ._harness import StoreFactory as StoreFactory
from ._harness import StoreFixture as StoreFixture
from ._harness import make_job as make_job
