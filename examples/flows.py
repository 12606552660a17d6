"""Flows: a parent job runs after its children, across queues, and reads their results."""

from __future__ import annotations

from _run import run

import conveyor
from conveyor import FlowJob


async def work(job: conveyor.Job) -> object:
    if job.name == "render":
        parts = await job.get_children_values()
        return f"video from {len(parts)} parts: " + ", ".join(sorted(map(str, parts.values())))
    return f"{job.data}.mp4"


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        flow = await conveyor.FlowProducer(store=store).add(
            FlowJob("render", "videos", "trailer", children=[
                FlowJob("encode", "encoding", name) for name in ("intro", "scene-1", "credits")
            ])
        )  # fmt: skip
        print("parent waits:", flow.job.state.value)
        async with (
            conveyor.open_worker("encoding", work, store=store, concurrency=3),
            conveyor.open_worker("videos", work, store=store),
        ):
            print(await flow.job.wait_until_finished(timeout=10))


if __name__ == "__main__":
    run(main)
