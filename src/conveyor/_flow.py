"""FlowProducer: a tree of jobs across queues, where a parent runs after all its children."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ._job import Job
from ._queue import build_job, make_options
from .store import (
    ArgumentTypeError,
    JobData,
    JobOptions,
    JsonValue,
    Store,
    check_name,
)
from .store._validate import HandedOver

__all__ = ["FlowJob", "FlowProducer", "FlowResult"]


def _children(value: Sequence[FlowJob]) -> tuple[FlowJob, ...]:
    if isinstance(value, FlowJob) or not isinstance(value, Sequence):
        raise ArgumentTypeError("children", "expected a sequence of FlowJob")
    for child in value:
        if not isinstance(child, FlowJob):
            raise ArgumentTypeError("children", f"expected FlowJob, got {type(child).__name__}")
    return tuple(value)


@attrs.frozen
class FlowJob:
    """One node of a flow: a job and the children it waits for.

    ::

        FlowJob("assemble", "cars", {"model": "T"}, children=[
            FlowJob("wheels", "parts"), FlowJob("engine", "parts", opts={"priority": 1}),
        ])

    :param opts: the job's options, as keyword arguments of :meth:`Queue.add` would give them;
        ``fail_parent_on_child_failure`` on a child says what its failure does to this job.
    """

    name: str
    queue_name: str
    data: JsonValue = None
    opts: Mapping[str, Any] | None = None
    children: Sequence[FlowJob] = attrs.field(default=(), converter=_children)


@attrs.frozen
class FlowResult:
    """The added flow: each node's :class:`Job` and its children's results."""

    job: Job
    children: tuple[FlowResult, ...] = ()

    def walk(self) -> Iterator[FlowResult]:
        """This node, then its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


class FlowProducer:
    """Adds flows: every job of a tree in one transaction, parents waiting for children.

    ::

        flows = conveyor.FlowProducer(store=store)
        result = await flows.add(FlowJob("report", "reports", children=[...]))
        await result.job.wait_until_finished()
    """

    def __init__(self, *, store: Store) -> None:
        if not isinstance(store, Store):
            raise ArgumentTypeError("store", f"expected a Store, got {type(store).__name__}")
        self.store = store

    async def add(self, flow: FlowJob) -> FlowResult:
        """Add one flow; return its tree of jobs."""
        [result] = await self.add_bulk([flow])
        return result

    async def add_bulk(self, flows: Sequence[FlowJob]) -> list[FlowResult]:
        """Add several flows in one transaction."""
        records = HandedOver()  # made here and never touched again: the store takes them over
        shapes = [self._flatten(flow, None, records, "flow") for flow in flows]
        saved = await self.store.save_flow(records)
        return [self._result(shape, saved) for shape in shapes]

    def _flatten(
        self, node: object, parent: JobData | None, out: list[JobData], where: str
    ) -> tuple[int, list[Any]]:
        """Append the node's record, then its children's, to ``out``; return the tree's shape
        as positions in ``out``."""
        if not isinstance(node, FlowJob):
            raise ArgumentTypeError(where, f"expected FlowJob, got {type(node).__name__}")
        check_name(node.queue_name, f"{where}.queue_name")
        opts = make_options(JobOptions(), node.opts or {})
        record = build_job(node.queue_name, node.name, node.data, opts)
        if parent is not None:
            record.parent_id = parent.id
            record.parent_queue_name = parent.queue_name
        record.deduplication_key = None
        position = len(out)
        out.append(record)
        children = [
            self._flatten(child, record, out, f"{where}.children[{i}]")
            for i, child in enumerate(node.children)
        ]
        return (position, children)

    def _result(self, shape: tuple[int, list[Any]], saved: list[JobData]) -> FlowResult:
        position, children = shape
        return FlowResult(
            Job(saved[position], self.store), tuple(self._result(c, saved) for c in children)
        )
