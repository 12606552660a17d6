"""Every example runs to completion, under asyncio and under trio, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

EXPECTED = {
    "demo.py": "final: {'completed': 216}",
    "quickstart.py": "sent to a@example.com",
    "retries.py": "hopeless: ValueError: bad input after 1 attempt",
    "flows.py": "video from 3 parts: credits.mp4, intro.mp4, scene-1.mp4",
    "groups.py": "served: big-corp small-shop startup big-corp small-shop startup",
    "cron.py": "tick 5 due at",
    "batch.py": "{'completed': 119, 'failed': 1}",
    "cancellation.py": "after shutdown the unfinished job is waiting",
}


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str, backend: str, tmp_path: Path) -> None:
    args = [sys.executable, str(EXAMPLES / script)] + (["--trio"] if backend == "trio" else [])
    if script == "demo.py":  # its default store is ./demo.db: keep the test's file elsewhere
        args.append(f"sqlite:///{tmp_path}/demo.db")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[script] in done.stdout, done.stdout
