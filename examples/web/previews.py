"""Link previews: the jobs of the web example, shared by ``app.py`` (which adds them) and
``worker.py`` (which runs them).

A preview job fetches one web page and returns what a chat application shows under a pasted
link: the page's title, description and image, and where redirects led. The HTTP request is the
slow and flaky part that a web request should not wait on, so it runs in a worker: errors that
may pass (connection failures, timeouts, 5xx, 429) are retried with backoff; errors that another
attempt would only repeat (404, a PDF instead of a page) end the job at once.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from typing import Any

import httpx

import conveyor

QUEUE = "previews"
"""The queue the app adds to and the workers take from."""

MAX_URL_LENGTH = 2000
MAX_BYTES = 512 * 1024
"""How much of a page is read: the head, where the title and meta tags are, comes first."""

USER_AGENT = "conveyor-web-example/0.1 (link previews)"

_RETRIED_CLIENT_ERRORS = frozenset({408, 425, 429})
"""4xx statuses that say "not now" rather than "never"."""


def job_options() -> dict[str, Any]:
    """The options of every preview job (keyword arguments of :meth:`conveyor.Queue.add`).

    Three attempts, 1 s then 2 s apart (jittered); 30 s at most per attempt; the same URL asked
    for again within a minute gets the job already made for it; the last 1,000 finished jobs of
    each outcome are kept for ``GET /jobs/{id}``, older ones removed.
    """
    return {
        "attempts": 3,
        "backoff": conveyor.Backoff.exponential("1s", jitter=0.5),
        "timeout": "30s",
        "remove_on_complete": 1000,
        "remove_on_fail": 1000,
    }


def deduplication(url: str) -> conveyor.Deduplication:
    """Throttle by URL: one job per URL per minute (hashed: URLs can be long)."""
    return conveyor.Deduplication(key=url, ttl="1 minute", hash=True)


def check_url(value: object) -> str:
    """``value`` if it is an absolute http(s) URL, else raise ``ValueError`` saying why.

    A public deployment would also refuse hosts that resolve to private addresses, so that
    nobody can make the workers fetch internal services.
    """
    if not isinstance(value, str) or not value:
        raise ValueError('"url" must be a non-empty string')
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f'"url" is longer than {MAX_URL_LENGTH} characters')
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError('"url" must be an absolute http:// or https:// URL')
    return value


class PermanentError(Exception):
    """A failure another attempt would repeat: the job is discarded (no retries) and fails."""


class TemporaryError(Exception):
    """A failure that may pass: the job is tried again after its backoff, while attempts last."""


class _HeadParser(HTMLParser):
    """Collects the ``<title>`` and the ``<meta>`` tags of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.meta: dict[str, str] = {}
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag == "meta":
            values = dict(attrs)
            key = values.get("property") or values.get("name")
            content = values.get("content")
            if key and content:
                self.meta.setdefault(key.lower(), " ".join(content.split()))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)


def parse_page(html: str) -> dict[str, str | None]:
    """The preview fields of a page: Open Graph tags first, then the plain HTML ones."""
    parser = _HeadParser()
    parser.feed(html)
    parser.close()
    meta = parser.meta
    title = " ".join("".join(parser.title).split())
    return {
        "title": meta.get("og:title") or title or None,
        "description": meta.get("og:description") or meta.get("description"),
        "image": meta.get("og:image"),
    }


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP client of a worker: one connection pool for all its jobs."""
    async with httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=5,
        timeout=httpx.Timeout(10.0),
        headers={"user-agent": USER_AGENT, "accept": "text/html,application/xhtml+xml"},
    ) as client:
        yield client


class Previewer:
    """The processor: ``await previewer(job)`` fetches ``job.data["url"]`` and returns its
    preview.

    Progress goes 10 (requesting), 50 (headers in), 100 (parsed).
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __call__(self, job: conveyor.Job) -> dict[str, conveyor.store.JsonValue]:
        data = job.data
        try:
            url = check_url(data.get("url") if isinstance(data, dict) else None)
        except ValueError as exc:
            await job.discard()
            raise PermanentError(f"bad job data: {exc}") from exc
        await job.update_progress(10)
        async with self._client.stream("GET", url) as response:
            await self._check(job, response)
            await job.update_progress(50)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BYTES:
                    break
        try:
            html = bytes(body[:MAX_BYTES]).decode(response.charset_encoding or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            html = bytes(body[:MAX_BYTES]).decode("utf-8", "replace")
        preview = parse_page(html)
        await job.update_progress(100)
        return {
            "url": url,
            "final_url": str(response.url),
            "status": response.status_code,
            **preview,
            "bytes_read": min(len(body), MAX_BYTES),
        }

    async def _check(self, job: conveyor.Job, response: httpx.Response) -> None:
        status = response.status_code
        if status >= 500 or status in _RETRIED_CLIENT_ERRORS:
            raise TemporaryError(f"HTTP {status} from {response.url}")
        if status >= 400:
            await job.discard()
            raise PermanentError(f"HTTP {status} from {response.url}")
        content_type = response.headers.get("content-type", "")
        if "html" not in content_type.lower():
            await job.discard()
            raise PermanentError(f"not an HTML page: {content_type or 'no content type'}")
