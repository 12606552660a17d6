"""Retries: exponential backoff with jitter, a custom backoff function, and discard()."""

from __future__ import annotations

from _run import run

import conveyor


def backoff_for(attempts_made: int, error: BaseException | None) -> float:
    """A custom backoff: 50 ms per failed attempt (module-level, so workers can import it)."""
    return 0.05 * attempts_made


async def flaky(job: conveyor.Job) -> str:
    if job.name == "hopeless":
        await job.discard()  # no point retrying: fail now
        raise ValueError("bad input")
    if job.attempts_made < 2:
        raise ConnectionError(f"attempt {job.attempts_made + 1} failed")
    return f"succeeded on attempt {job.attempts_made + 1}"


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queue = conveyor.Queue("payments", store=store)
        exp = await queue.add("charge", attempts=5,
                              backoff=conveyor.Backoff.exponential(0.05, jitter=0.5))  # fmt: skip
        custom = await queue.add("refund", attempts=5, backoff=conveyor.Backoff.custom(backoff_for))
        hopeless = await queue.add("hopeless", attempts=5)
        async with conveyor.open_worker("payments", flaky, store=store, poll_interval=0.05) as w:
            w.events.on("retrying", lambda e: print(f"  {e.job_id}: {e.data['failed_reason']}"))
            print("charge:", await exp.wait_until_finished(timeout=10))
            print("refund:", await custom.wait_until_finished(timeout=10))
            try:
                await hopeless.wait_until_finished(timeout=10)
            except conveyor.JobFailedError as exc:
                print(
                    "hopeless:",
                    exc.failed_reason,
                    f"after {(await hopeless.refresh()).attempts_made} attempt",
                )


if __name__ == "__main__":
    run(main)
