"""The hypothesis state machine: each store against the reference model, under both backends.

The default profile runs 200 examples per store and backend; HYPOTHESIS_PROFILE=thorough runs
2,000.
"""

from __future__ import annotations

import unittest

from conveyor.testing.state_machine import make_store_state_machine

from .conftest import STORE_FACTORIES

for _store, _factory in STORE_FACTORIES.items():
    for _backend in ("asyncio", "trio"):
        _case: type[unittest.TestCase] = make_store_state_machine(_factory, _backend).TestCase
        globals()[f"TestStateMachine_{_store}_{_backend}"] = _case

del _case, _store, _factory, _backend
