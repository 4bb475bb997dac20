"""Write load through the façade: product creates and updates, reads, and monolith orders.

`WriteLoad` sends, at a target rate (200 writes/s by default), creates (`POST /api/products`)
and updates (`PATCH /api/products/{id}`) of products as the monolith's staff user, each carrying
a unique marker (the create's `sku` and `attributes.marker`; an update's `attributes.marker` and
a price derived from it), plus product reads and orders of a customer (`POST /api/orders`, which
the monolith answers and which take `stock` in the same transaction). Updates and orders go to a
pool of products the load creates first (with a large stock, so orders never run out); updates of
one product are sent one at a time, so the order they were acknowledged in is the order they
were applied in, which is what lets `cutover.writecheck` tell the last acknowledged value.

Every request is recorded (`Sample`): kind, marker, product, when it was due and sent, its
latency from when it was due (a client that falls behind its rate sees that as latency, not as
a lower rate), its status (0: no answer) and error. The pacing is open loop: a request is due
every 1/rate s whatever the answers do, bounded by `concurrency` requests in flight.

`run_in_background(load)` runs it on an event loop in a thread of its own, so a caller can switch
routes meanwhile and `mark()` when it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

__all__ = ["LoadHandle", "LoadSettings", "Sample", "WriteLoad", "run_in_background"]

POOL_STOCK = 1_000_000
"""Stock of every pool product: orders never run out during a run."""
WRITE_KINDS = ("create", "update")
"""The requests on the route the write switch moves (catalog-write)."""


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """What the load sends, and as whom."""

    rate: float = 200.0
    """Product writes (creates + updates) per second."""
    create_share: float = 0.3
    """Share of the writes that are creates; the rest are updates of pool products."""
    read_rate: float = 50.0
    order_rate: float = 10.0
    pool: int = 200
    """Products created before the load starts, for updates and orders."""
    concurrency: int = 256
    timeout: float = 15.0
    staff: tuple[str, str] = ("admin", "admin")
    customer: tuple[str, str] = ("user1", "password")
    run_id: str = field(default_factory=lambda: "L" + uuid.uuid4().hex[:8])
    """Prefix of every marker, so a checker finds this run's rows among any others."""


@dataclass(slots=True)
class Sample:
    """One request of the load, as the client saw it."""

    kind: str
    """`create`, `update`, `read`, `order` or `pool` (a pool product's create)."""
    marker: str
    product_id: int | None
    due: float
    """Unix time the request was due (the pacing's slot)."""
    sent: float = 0.0
    latency: float = 0.0
    """Seconds from `due` to the answer (or the failure)."""
    status: int = 0
    """HTTP status; 0 when no answer came (connection error, timeout)."""
    error: str = ""
    price: str = ""
    quantity: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def done(self) -> float:
        return self.due + self.latency

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class WriteLoad:
    """The load against `url` (the façade); `prepare()` logs in and creates the pool, `run()` sends
    until stopped. `samples` holds every request of both."""

    def __init__(self, url: str, settings: LoadSettings | None = None) -> None:
        self.url = url
        self.settings = settings or LoadSettings()
        self.samples: list[Sample] = []
        self.pool: list[int] = []
        self.category: int | None = None
        self._staff_cookie = ""
        self._customer_cookie = ""
        self._locks: dict[int, asyncio.Lock] = {}
        self._seq = itertools.count(1)

    # -- setup ----------------------------------------------------------------------------------

    async def prepare(self, client: aiohttp.ClientSession) -> None:
        """Log in both users, find a category, create the pool products (through the façade)."""
        self._staff_cookie = await self._login(client, *self.settings.staff)
        self._customer_cookie = await self._login(client, *self.settings.customer)
        async with client.get("/api/categories") as response:
            categories = await response.json()
        if not categories:
            raise RuntimeError(f"{self.url} has no product categories; seed the monolith first (python -m monolith seed)")
        self.category = int(categories[0]["id"])
        created = await asyncio.gather(*(self._create(client, "pool", time.time(), POOL_STOCK) for _ in range(self.settings.pool)))
        failed = [s for s in created if not s.ok]
        if failed:
            raise RuntimeError(
                f"creating the load's pool products through {self.url} failed: {len(failed)} of {len(created)}, "
                f"first: {failed[0].status} {failed[0].error}"
            )
        self.pool = [s.product_id for s in created if s.product_id is not None]
        self._locks = {pid: asyncio.Lock() for pid in self.pool}

    async def _login(self, client: aiohttp.ClientSession, username: str, password: str) -> str:
        async with client.post("/accounts/login", json={"username": username, "password": password}) as response:
            session = response.cookies.get("sessionid")
            if response.status != 200 or session is None:
                raise RuntimeError(
                    f"logging in {username!r} through {self.url} failed ({response.status}); the load needs the "
                    "monolith's seeded users (admin/admin, user1/password)"
                )
        return str(session.value)

    # -- the run --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, client: aiohttp.ClientSession) -> None:
        """Send writes, reads and orders at their rates until `stop` is set."""
        s = self.settings
        slots = asyncio.Semaphore(s.concurrency)
        creates = s.rate * s.create_share
        pool_cycle = itertools.cycle(self.pool)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._paced(stop, group, slots, creates, lambda due: self._create(client, "create", due, 0)))
            group.create_task(self._paced(
                stop, group, slots, s.rate - creates, lambda due: self._update(client, next(pool_cycle), due)
            ))
            group.create_task(self._paced(stop, group, slots, s.read_rate, lambda due: self._read(client, next(pool_cycle), due)))
            group.create_task(self._paced(stop, group, slots, s.order_rate, lambda due: self._order(client, next(pool_cycle), due)))

    async def _paced(
        self, stop: asyncio.Event, group: asyncio.TaskGroup, slots: asyncio.Semaphore, rate: float,
        send: Callable[[float], Awaitable[Sample]],
    ) -> None:
        if rate <= 0:
            return
        started = time.time()
        for n in itertools.count():
            due = started + n / rate
            delay = due - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            await slots.acquire()
            task = group.create_task(send(due))
            task.add_done_callback(lambda _: slots.release())

    async def _request(
        self, client: aiohttp.ClientSession, sample: Sample, method: str, path: str, cookie: str, body: Any = None,
    ) -> Any:
        """Send one request; its JSON body (None when it failed or has none)."""
        self.samples.append(sample)
        sample.sent = time.time()
        # The session as a plain header (the client keeps no cookies: see `client()`).
        headers = {"cookie": f"sessionid={cookie}"} if cookie else None
        try:
            async with client.request(method, path, json=body, headers=headers) as response:
                sample.status = response.status
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            sample.latency = time.time() - sample.due
        if not sample.ok:
            sample.error = text[:200]
            return None
        return json.loads(text) if text else None

    async def _create(self, client: aiohttp.ClientSession, kind: str, due: float, stock: int) -> Sample:
        marker = f"{self.settings.run_id}-c{next(self._seq)}"
        price = _price(marker)
        sample = Sample(kind, marker, None, due, price=price)
        body = {
            "sku": marker, "name": f"Load product {marker}", "price": price, "stock": stock,
            "category": self.category, "attributes": {"marker": marker},
        }
        created = await self._request(client, sample, "POST", "/api/products", self._staff_cookie, body)
        if created is not None:
            sample.product_id = int(created["id"])
        return sample

    async def _update(self, client: aiohttp.ClientSession, product_id: int, due: float) -> Sample:
        marker = f"{self.settings.run_id}-u{next(self._seq)}"
        sample = Sample("update", marker, product_id, due, price=_price(marker))
        # One update of a product at a time: acknowledged in the order applied.
        async with self._locks[product_id]:
            body = {"price": sample.price, "attributes": {"marker": marker}}
            await self._request(client, sample, "PATCH", f"/api/products/{product_id}", self._staff_cookie, body)
        return sample

    async def _read(self, client: aiohttp.ClientSession, product_id: int, due: float) -> Sample:
        sample = Sample("read", "", product_id, due)
        await self._request(client, sample, "GET", f"/api/products/{product_id}", "")
        return sample

    async def _order(self, client: aiohttp.ClientSession, product_id: int, due: float) -> Sample:
        sample = Sample("order", "", product_id, due, quantity=1)
        body = {"items": [{"product_id": product_id, "quantity": 1}]}
        await self._request(client, sample, "POST", "/api/orders", self._customer_cookie, body)
        return sample

    def client(self) -> aiohttp.ClientSession:
        """A session for `url`. aiohttp, not httpx: at a few hundred requests a second the load's
        own CPU matters (on one core, about 0.1 ms a request against httpx's 2.4 ms), and on a small
        machine it shares the cores with the stack it measures. No cookie jar: the façade's
        assignment cookie would make every request one user; sessions go as headers."""
        return aiohttp.ClientSession(
            self.url, connector=aiohttp.TCPConnector(limit=self.settings.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout), cookie_jar=aiohttp.DummyCookieJar(),
        )


def _price(marker: str) -> str:
    """A price that follows from the marker, so a row's price says which write set it."""
    n = int(marker.rsplit("-", 1)[1][1:])
    return f"{1 + n % 9000}.{n % 100:02d}"


@dataclass
class LoadHandle:
    """A load running in a thread: `mark(name)` notes a moment, `stop()` ends it and joins."""

    load: WriteLoad
    marks: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def mark(self, name: str) -> float:
        self.marks[name] = time.time()
        return self.marks[name]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended (an error in the load)
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=self.load.settings.timeout + 30)
        if self.error is not None:
            raise RuntimeError(f"the write load failed: {self.error}") from self.error


@contextlib.contextmanager
def run_in_background(load: WriteLoad, *, prepared: threading.Event | None = None) -> Iterator[LoadHandle]:
    """Prepare the load and run it in a thread until the block ends (stopped also on errors)."""
    handle = LoadHandle(load)
    ready = prepared or threading.Event()

    async def main() -> None:
        handle._loop = asyncio.get_running_loop()
        handle._stop = asyncio.Event()
        async with load.client() as client:
            try:
                await load.prepare(client)
            finally:
                ready.set()
            await load.run(handle._stop, client)

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller by stop()
            handle.error = exc
            ready.set()

    handle._thread = threading.Thread(target=target, name="write-load", daemon=True)
    handle._thread.start()
    ready.wait()
    if handle.error is not None:
        handle._thread.join()
        raise RuntimeError(f"the write load could not start: {handle.error}") from handle.error
    try:
        yield handle
    finally:
        handle.stop()
