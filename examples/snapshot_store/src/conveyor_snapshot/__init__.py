"""A MemoryStore persisted to a JSON snapshot: ``snapshot:///path/to/jobs.json``."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import anyio

from conveyor.store import InvalidArgumentError, StoreError
from conveyor_stores.memory import MemoryStore

__all__ = ["SnapshotStore"]


class SnapshotStore(MemoryStore):
    """Jobs in memory, saved to ``path`` on :meth:`save` and :meth:`disconnect`, loaded on
    :meth:`connect`. The file is replaced atomically, so a crash while saving keeps the
    previous snapshot.

    :param path: the snapshot file; created on the first save.
    """

    def __init__(self, path: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SnapshotStore:
        """``snapshot:///relative/path.json`` or ``snapshot:////absolute/path.json``."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "snapshot" or parts.netloc or not parts.path.strip("/"):
            raise InvalidArgumentError(
                "url",
                f"expected snapshot:///relative.json or snapshot:////absolute.json, got {url!r}",
            )
        if parts.query:
            raise InvalidArgumentError("url", "snapshot:// takes no query options")
        return cls(parts.path[1:], **options)

    async def connect(self) -> None:
        await super().connect()
        try:
            text = await anyio.Path(self.path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read snapshot {self.path}: {exc}") from exc
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.path} is not a conveyor snapshot (not JSON)") from exc
        self.import_state(state)

    async def save(self) -> None:
        """Write the snapshot now."""
        await self.now()  # refuses a store that is not connected
        text = json.dumps(self.export_state(), separators=(",", ":"))
        await anyio.to_thread.run_sync(self._write, text)

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def disconnect(self) -> None:
        try:
            if self.connected:
                with anyio.CancelScope(shield=True):
                    await self.save()
        finally:
            await super().disconnect()
