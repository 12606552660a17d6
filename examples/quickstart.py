"""The first example of DESIGN.md: add a job, run a worker, wait for the result."""

from __future__ import annotations

from _run import run

import conveyor


async def send_email(job: conveyor.Job) -> str:
    await job.update_progress(50)
    await job.log("talking to SMTP")
    return f"sent to {job.data['to']}"


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queue = conveyor.Queue("emails", store=store)
        job = await queue.add(
            "send", {"to": "a@example.com"}, attempts=3, backoff=conveyor.Backoff.exponential(1.0)
        )
        async with conveyor.open_worker("emails", send_email, store=store, concurrency=10):
            print(await job.wait_until_finished(timeout=10))


if __name__ == "__main__":
    run(main)
