"""The outbox in Redis, for Butlers whose key-value store is Redis: one outbox that several Butlers share.

Each delivery is one key holding its record (JSON), listed in a sorted set by creation time. A delivery
is added with ``SET NX``: when two Butlers get the same alert (both receive the appenders' events), only
the first adds it, and only that one queues it. Before each attempt a Butler claims the delivery (a key
with its name, ``SET NX`` with a lease a little longer than an attempt may take) and reads its record
again: a delivery another Butler is attempting, or has delivered, is not sent. A Butler that starts reads
the deliveries still pending, its own and those a Butler that stopped left behind, and claims each before
an attempt, so none is lost and none is sent by two at once.

The pending deliveries are also listed in a sorted set by when each is next due (``pending``): a running
Butler asks it for those overdue (``overdue``), which the Butler that added them did not attempt in time
(it was killed, or is behind), and attempts them itself, claim first as always.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import orjson

from butler.alerts.outbox import Delivery, Outbox, OutboxUnavailable, encode_record
from butler.redis_edge import DELETE_IF_HELD, EXTEND_IF_HELD, RedisEdge

T = TypeVar("T")
#: Records read from Redis per round trip at start-up.
_BATCH = 500

#: KEYS: the index, the pending deliveries by due time, then the records. ARGV: for each record its text,
#: creation time, id and due time (empty when not pending). Adds each record not stored yet, with its
#: places in the two sets, in one step; 1 for those this call added or that hold the very text given (an
#: earlier call of ours whose answer was lost: its delivery is still ours to send), 0 for those another
#: Butler added.
_ADD = """
local new = {}
for i = 3, #KEYS do
  local at = 4 * (i - 3)
  local text = ARGV[at + 1]
  if redis.call('SET', KEYS[i], text, 'NX') or redis.call('GET', KEYS[i]) == text then
    redis.call('ZADD', KEYS[1], ARGV[at + 2], ARGV[at + 3])
    if ARGV[at + 4] ~= '' then
      redis.call('ZADD', KEYS[2], ARGV[at + 4], ARGV[at + 3])
    end
    new[i - 2] = 1
  else
    new[i - 2] = 0
  end
end
return new
"""


def _unreachable(exc: Exception) -> Exception:
    return OutboxUnavailable(f"The alert outbox cannot reach Redis: {exc}")


class RedisOutbox(Outbox):
    """The outbox as keys below ``prefix`` in the Redis at ``url``."""

    def __init__(self, url: str, prefix: str, keep_seconds: float) -> None:
        super().__init__(keep_seconds)
        self.prefix = prefix
        #: Who holds a claim: this Butler, for as long as it runs.
        self.instance = uuid.uuid4().hex
        self._redis = RedisEdge(url, _unreachable)
        self._client = self._redis.client
        self._call = self._redis.call
        self._housekeeping: set[asyncio.Task[Any]] = set()

    def _record_key(self, ident: str) -> str:
        return f"{self.prefix}delivery:{ident}"

    def _claim_key(self, ident: str) -> str:
        return f"{self.prefix}claim:{ident}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}deliveries"

    @property
    def _pending(self) -> str:
        return f"{self.prefix}pending"

    shared = True

    async def _load(self, cutoff: float) -> list[Delivery]:
        ids: list[Any] = await self._call(self._client.zrange(self._index, 0, -1))
        deliveries: list[Delivery] = []
        gone: list[str] = []
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            records: list[Any] = await self._call(self._client.mget([self._record_key(i) for i in batch]))
            for ident, record in zip(batch, records, strict=True):
                delivery = Delivery.from_record(ident, orjson.loads(record)) if record else None
                if delivery is None or (delivery.finished is not None and delivery.finished < cutoff):
                    gone.append(ident)
                else:
                    deliveries.append(delivery)
        if gone:
            self._drop(gone)
        return deliveries

    async def _keep_new(self, deliveries: list[Delivery]) -> list[Delivery]:
        # One script: a record stored without its place in the index would never be sent, and a write
        # whose answer was lost must still count as ours when written again.
        added: list[Any] = []
        for start in range(0, len(deliveries), _BATCH):
            batch = deliveries[start : start + _BATCH]
            texts: list[str] = []
            for delivery in batch:
                due = repr(delivery.next_attempt) if delivery.state == "pending" else ""
                texts += [encode_record(delivery), repr(delivery.created), delivery.id, due]
            keys = [self._index, self._pending, *(self._record_key(d.id) for d in batch)]
            added += await self._call(self._client.eval(_ADD, len(keys), *keys, *texts))
        return [d for d, was_set in zip(deliveries, added, strict=True) if was_set]

    async def save(self, delivery: Delivery) -> None:
        pipeline = self._client.pipeline(transaction=True)
        pipeline.set(self._record_key(delivery.id), encode_record(delivery))
        if delivery.state == "pending":
            pipeline.zadd(self._pending, {delivery.id: delivery.next_attempt})
        else:
            pipeline.zrem(self._pending, delivery.id)
        await self._call(pipeline.execute())

    async def overdue(self, before: float, limit: int = _BATCH) -> list[Delivery]:
        ids: list[Any] = await self._call(
            self._client.zrangebyscore(self._pending, "-inf", before, start=0, num=limit)
        )
        if not ids:
            return []
        records: list[Any] = await self._call(self._client.mget([self._record_key(i) for i in ids]))
        found = []
        finished = []
        for ident, record in zip(ids, records, strict=True):
            delivery = Delivery.from_record(ident, orjson.loads(record)) if record else None
            if delivery is None or delivery.state != "pending":
                finished.append(ident)  # listed by a Butler killed between its two writes
                continue
            known = self._deliveries.get(ident)
            if known is None:
                self._deliveries[ident] = delivery
                found.append(delivery)
            elif known.state == "pending":
                found.append(known)  # the object this Butler's worker may be attempting already
        if finished:
            await self._call(self._client.zrem(self._pending, *finished))
        return found

    def _drop(self, ids: list[str]) -> None:
        pipeline = self._client.pipeline(transaction=False)
        pipeline.delete(*(self._record_key(i) for i in ids))
        pipeline.zrem(self._index, *ids)
        pipeline.zrem(self._pending, *ids)
        task = asyncio.get_running_loop().create_task(pipeline.execute())
        self._housekeeping.add(task)
        # Forgetting old records is housekeeping: a failure leaves them for the next start to forget.
        task.add_done_callback(self._housekeeping_done)

    def _housekeeping_done(self, task: asyncio.Task[Any]) -> None:
        self._housekeeping.discard(task)
        if not task.cancelled():
            task.exception()  # looked at, so that a failure is not reported as never retrieved

    async def claim(self, delivery: Delivery, seconds: float) -> bool:
        lease = max(1, int(seconds * 1000))
        taken = await self._call(
            self._client.set(self._claim_key(delivery.id), self.instance, nx=True, px=lease)
        )
        return bool(taken)

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        lease = str(max(1, int(seconds * 1000)))
        claim = self._claim_key(delivery.id)
        await self._call(self._client.eval(EXTEND_IF_HELD, 1, claim, self.instance, lease))

    async def release(self, delivery: Delivery) -> None:
        # Only this Butler's own claim is removed: after a lease ran out, another may hold it.
        claim = self._claim_key(delivery.id)
        await self._call(self._client.eval(DELETE_IF_HELD, 1, claim, self.instance))

    def _spent_key(self, slot: tuple[str, str, str]) -> str:
        return f"{self.prefix}spent:{orjson.dumps(slot).decode()}"

    async def spent(self, slot: tuple[str, str, str]) -> float | None:
        moment = await self._call(self._client.get(self._spent_key(slot)))
        return float(moment) if moment else None

    async def spend(self, slot: tuple[str, str, str], moment: float, seconds: float) -> None:
        # Kept as long as the slot is taken: Redis forgets it when the rate limit no longer applies.
        lasts = max(1, int(seconds * 1000))
        await self._call(self._client.set(self._spent_key(slot), repr(moment), px=lasts))

    async def current(self, delivery: Delivery) -> Delivery:
        record = await self._call(self._client.get(self._record_key(delivery.id)))
        if not record:
            return delivery
        stored = Delivery.from_record(delivery.id, orjson.loads(record))
        # Another Butler's attempt counts too: the stored state is the one that holds.
        if stored.state != "pending" or stored.attempts > delivery.attempts:
            self._deliveries[delivery.id] = stored
            return stored
        return delivery

    async def close(self) -> None:
        await asyncio.gather(*self._housekeeping, return_exceptions=True)
        await self._redis.close()


def alerts_prefix(key_value_prefix: str) -> str:
    """The alert outbox's key prefix beside the key-value store's (``butler:kv:`` → ``butler:alerts:``)."""
    return key_value_prefix.removesuffix("kv:") + "alerts:"


__all__ = ["RedisOutbox", "alerts_prefix"]
