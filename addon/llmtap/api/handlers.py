"""What the local API does: turn its requests into records for the writer.

Kept apart from httpserver.py (HTTP) and addon.py (hooks) so it is plain Python over plain data. A
request id is known if the database has it (the look-up runs in a worker thread) or if this proxy
logged it recently: rows reach the file up to a flush later, or much later while it is locked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from llmtap.accounting.record import Annotation, Capture, Feedback, PropertyUpdate, Score
from llmtap.api import asynclog, httpserver
from llmtap.api.live import LiveFeed
from llmtap.policy.redact import redact_url
from llmtap.storage import postgres, query
from llmtap.ui import server as dashboard
from llmtap.wire import helicone, providers

logger = logging.getLogger(__name__)


class Service:
    def __init__(
        self,
        submit: Callable[[Capture | Annotation], bool],
        db_path: Callable[[], str],
        extra_providers: Callable[[], dict[str, providers.Provider]],
        store_limit: Callable[[], int],
        pending: Callable[[], int] = lambda: 0,
        live: LiveFeed | None = None,
    ) -> None:
        self.submit, self.db_path = submit, db_path
        self.extra_providers, self.store_limit = extra_providers, store_limit
        self.pending, self.live = pending, live
        self.recent = RecentIds(20_000)

    def keep_recent(self, size: int) -> None:
        """How many ids to remember: at most how many logged calls can be not yet in the file (the
        writer's queue plus the rows it holds back while the file is locked); older ids are found
        in the database and need no memory here. A new size starts afresh (a rare option change)."""
        if size != self.recent.size:
            self.recent = RecentIds(size)

    def remember(self, request_id: str) -> None:
        self.recent.add(request_id)

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> httpserver.Reply:
        if method == "GET" and path.split("?")[0] == "/api/ui/live" and self.live is not None:
            if not dashboard.host_ok(headers) and not headers.get("x-llmtap-authorized"):
                return httpserver.Reply(421, {"error": {"message": dashboard.HOST_ERROR, "status": 421}})
            sse = {**dashboard.SECURITY, "content-type": "text/event-stream", "cache-control": "no-cache"}
            return httpserver.Reply(200, self.live.stream(), sse)
        if dashboard.is_dashboard(method, path):  # its queries block: a worker thread, off the loop
            page = await asyncio.to_thread(dashboard.handle, method, path, headers, self.db_path())
            return httpserver.Reply(page.status, page.body, page.all_headers())
        name, detail = httpserver.route(method, path)  # detail: the request id, or the log's route
        if name == "health":  # pending: records handed to the writer, not yet in the file
            return httpserver.Reply(200, {"ok": True, "pending": self.pending()})
        if name == "log":
            route = detail or "custom"
            c = asynclog.capture(body, self.extra_providers(), self.store_limit(), route, headers)
            self._submit(c)
            self.remember(c.meta.request_id)
            return httpserver.Reply(
                200, {"ok": True, "id": c.meta.request_id}, {"helicone-id": c.meta.request_id}
            )
        request_id = detail
        assert request_id is not None
        valid = helicone.valid_uuid(request_id) or request_id
        if not await self.known(valid):
            raise httpserver.ApiError(404, f"no request with id {request_id!r}")
        now = datetime.now(UTC)
        if name == "feedback":
            rating = httpserver.rating(body)
            self._submit(Feedback(valid, rating, now))
            return httpserver.Reply(201, {"id": valid, "rating": rating})
        if name == "score":
            scores = httpserver.scores(body)
            for key, value in scores.items():
                self._submit(Score(valid, key, value, now))
            return httpserver.Reply(201, {"id": valid, "scores": scores})
        key, value = httpserver.property_update(body)
        self._submit(PropertyUpdate(valid, key, value))
        return httpserver.Reply(200, {"id": valid, "property": {key: value}})

    def _submit(self, item: Capture | Annotation) -> None:
        if not self.submit(item):
            raise httpserver.ApiError(500, "the writer is not keeping up; the record was dropped")

    async def known(self, request_id: str) -> bool:
        if request_id in self.recent:
            return True
        return await asyncio.to_thread(_in_db, self.db_path(), request_id)


def _in_db(path: str, request_id: str) -> bool:
    if postgres.is_url(path):
        return _in_postgres(path, request_id)
    try:
        conn = query.connect(path, wait=5)
    except query.QueryError:
        return False
    try:
        return (
            conn.execute("SELECT 1 FROM requests WHERE request_id = ? LIMIT 1", [request_id]).fetchone()
            is not None
        )
    finally:
        conn.close()


def _in_postgres(url: str, request_id: str, tries: int = 4, pause: float = 0.5) -> bool:
    """In a fleet the call may have gone through another proxy whose writer has not flushed it
    yet (within its llmtap_flush_ms): ask a few times before answering 404."""
    try:
        with postgres.connect(url, read_only=True) as conn:
            for attempt in range(tries):
                if postgres.has_request(conn, request_id):
                    return True
                conn.rollback()  # a fresh snapshot for the next look
                if attempt + 1 < tries:
                    time.sleep(pause)
    except Exception:
        logger.warning(f"llmtap: cannot look up request {request_id} in {redact_url(url)}", exc_info=True)
    return False


class RecentIds:
    """The last `size` request ids, 16 bytes each in one buffer allocated up front, so memory does
    not grow with traffic (a dict of id strings costs ~175 bytes per id). Adding is O(1); looking
    up scans the buffer (~20 us at 20k ids), which only the local API does. Request ids are UUIDs
    (llmtap makes them, or keeps a client's valid UUID); anything else is never recent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray(16 * size)
        self.added = 0

    def add(self, request_id: str) -> None:
        raw = _uuid_bytes(request_id)
        if raw is None or not self.size:
            return
        at = self.added % self.size * 16
        self.buf[at : at + 16] = raw
        self.added += 1

    def __contains__(self, request_id: str) -> bool:
        raw = _uuid_bytes(request_id)
        end = 16 * min(self.added, self.size)
        at = self.buf.find(raw, 0, end) if raw is not None else -1
        while at != -1 and at % 16:  # a match must start at a slot, not straddle two
            at = self.buf.find(raw, at + 1, end)
        return at != -1


def _uuid_bytes(request_id: str) -> bytes | None:
    try:
        raw = bytes.fromhex(request_id.replace("-", ""))
    except ValueError:
        return None
    return raw if len(raw) == 16 else None
