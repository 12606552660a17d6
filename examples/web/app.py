"""A web application that hands slow work to conveyor: link previews over HTTP.

::

    POST /previews       {"url": "https://..."}  -> 202 {"id", "state", "status_url"}
    GET  /jobs/{id}      the job: state, progress, result or failure reason, attempts
    GET  /queues/{name}  job counts by state
    GET  /               a small HTML page (with a title and a description: it can preview
                         itself)

The store is opened once, in the app's lifespan, from ``CONVEYOR_STORE_URL`` (default
``sqlite:///web-demo.db``); request handlers only add and read jobs. The jobs run in
``worker.py``, a separate process (under trio if you like: the two only share the store), or
in this process when ``CONVEYOR_WEB_WORKER=1``. Run it with uvicorn::

    uvicorn app:app --app-dir examples/web
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, TypedDict

import previews
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import conveyor

DEFAULT_STORE_URL = "sqlite:///web-demo.db"


class State(TypedDict):
    """What the lifespan hands every request (``request.state["queue"]``)."""

    store: conveyor.Store
    queue: conveyor.Queue


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# -- endpoints ------------------------------------------------------------------------------------


async def add_preview(request: Request[State]) -> Response:
    """``POST /previews {"url": ...}``: add a preview job; 202 with where to watch it."""
    try:
        body = await request.json()
    except ValueError:  # not JSON, or not UTF-8
        return error(400, 'the body must be JSON, like {"url": "https://example.com"}')
    if not isinstance(body, dict):
        return error(400, 'the body must be a JSON object, like {"url": "https://example.com"}')
    if "url" not in body:
        return error(400, 'missing field "url"')
    unknown = sorted(set(body) - {"url"})
    if unknown:
        return error(400, f"unknown field {unknown[0]!r} (the only field is 'url')")
    try:
        url = previews.check_url(body["url"])
    except ValueError as exc:
        return error(400, str(exc))
    queue = request.state["queue"]
    job = await queue.add(
        "preview", {"url": url}, deduplication=previews.deduplication(url), **previews.job_options()
    )
    status_url = str(request.url_for("job", job_id=job.id))
    return JSONResponse(
        {"id": job.id, "state": job.state.value, "status_url": status_url},
        status_code=202,
        headers={"location": status_url},
    )


async def show_job(request: Request[State]) -> Response:
    """``GET /jobs/{id}``: the job as JSON, or 404."""
    job_id = request.path_params["job_id"]
    job = await request.state["queue"].get_job(job_id)
    if job is None:
        return error(404, f"no job {job_id!r} in queue {previews.QUEUE!r} (or it was removed)")
    return JSONResponse(job_json(job))


async def show_queue(request: Request[State]) -> Response:
    """``GET /queues/{name}``: how many jobs the queue holds in each state."""
    queue = conveyor.Queue(request.path_params["name"], store=request.state["store"])
    counts = await queue.get_job_counts()
    return JSONResponse(
        {
            "queue": queue.name,
            "paused": await queue.is_paused(),
            "counts": {state.value: n for state, n in counts.items()},
        }
    )


async def index(request: Request[State]) -> Response:
    """``GET /``: what this app is, in HTML."""
    example = html.escape(json.dumps({"url": str(request.url_for("index"))}))
    return HTMLResponse(
        f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>conveyor link previews</title>
  <meta name="description" content="A Starlette app that hands link previews to conveyor.">
</head>
<body>
  <h1>conveyor link previews</h1>
  <p><code>POST /previews</code> with <code>{example}</code> (URLs up to {previews.MAX_URL_LENGTH}
  characters) adds a job; <code>GET /jobs/{{id}}</code> shows it;
  <code>GET /queues/{previews.QUEUE}</code> counts the queue's jobs.</p>
</body>
</html>
"""
    )


def job_json(job: conveyor.Job) -> dict[str, Any]:
    """The public view of a job."""
    finished = job.completed_at or job.failed_at
    return {
        "id": job.id,
        "queue": job.queue_name,
        "name": job.name,
        "data": job.data,
        "state": job.state.value,
        "progress": job.progress,
        "result": job.returnvalue if job.state is conveyor.JobState.COMPLETED else None,
        "failed_reason": job.failed_reason,  # also set while a failed attempt waits for a retry
        "attempts_made": job.attempts_made,
        "max_attempts": job.opts.attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.processed_at),
        "finished_at": _iso(finished),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


async def bad_argument(request: Request, exc: Exception) -> Response:
    """A name conveyor refuses (a queue name with a NUL, say) is the client's mistake: 400."""
    return error(400, str(exc))


# -- the application ------------------------------------------------------------------------------


def create_app(store_url: str | None = None, *, in_process_worker: bool | None = None) -> Starlette:
    """The application.

    :param store_url: the store; default ``CONVEYOR_STORE_URL``, else ``sqlite:///web-demo.db``.
    :param in_process_worker: also run the jobs in this process; default: whether
        ``CONVEYOR_WEB_WORKER`` is ``1``.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        url = store_url or os.environ.get("CONVEYOR_STORE_URL") or DEFAULT_STORE_URL
        run_jobs = in_process_worker
        if run_jobs is None:
            run_jobs = os.environ.get("CONVEYOR_WEB_WORKER") == "1"
        # Leaving the lifespan stops the worker (running jobs get 10 s) before the store closes.
        async with conveyor.open_store(url) as store, AsyncExitStack() as stack:
            if run_jobs:
                client = await stack.enter_async_context(previews.http_client())
                await stack.enter_async_context(
                    conveyor.open_worker(
                        previews.QUEUE,
                        previews.Previewer(client),
                        store=store,
                        concurrency=10,
                        shutdown_timeout=10,
                    )
                )
            yield {"store": store, "queue": conveyor.Queue(previews.QUEUE, store=store)}

    return Starlette(
        routes=[
            Route("/", index, name="index"),
            Route("/previews", add_preview, methods=["POST"]),
            Route("/jobs/{job_id}", show_job, name="job"),
            Route("/queues/{name}", show_queue),
        ],
        lifespan=lifespan,
        exception_handlers={
            conveyor.InvalidArgumentError: bad_argument,
            conveyor.ArgumentTypeError: bad_argument,
        },
        max_body_size=64 * 1024,
    )


app = create_app()
