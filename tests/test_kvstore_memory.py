"""The key-value store's rules and the memory backend, called directly with a clock the test moves.

The store reads the wall clock through ``butler.kvstore.memory.time``; replacing it lets expiry be checked to
the millisecond without sleeping. The REST API over each backend is tested in test_key_value.py.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from butler.config.settings import KeyValueSettings
from butler.errors import BadRequest, LimitReached, Unavailable
from butler.kvstore import (
    MAX_KEY_LENGTH,
    MAX_NAMESPACE_LENGTH,
    MAX_TTL_MS,
    InvalidPair,
    NamespaceFull,
    NamespaceNotFound,
    StoreUnavailable,
    check_pair,
    memory,
    open_store,
)
from butler.kvstore.memory import MemoryStore, expires_at
from tests.waiting import eventually


class Clock:
    """Stands in for the ``time`` module: ``time()`` is whatever the test set."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(memory, "time", fake)
    return fake


class Recording(MemoryStore):
    """A memory store that keeps what its expiry timer dropped."""

    def __init__(self, max_keys: int = 1000) -> None:
        super().__init__(max_keys)
        self.dropped: list[tuple[str, str]] = []

    def expired(self, pairs: list[tuple[str, str]]) -> None:
        self.dropped.extend(pairs)


# -- check_pair ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "stored"), [(0, 0), (1, 1), (1.9, 1), (60_000.5, 60_000), (MAX_TTL_MS, MAX_TTL_MS)]
)
def test_ttl_kept_in_whole_milliseconds(ttl: float, stored: int) -> None:
    assert check_pair("n" * MAX_NAMESPACE_LENGTH, "k" * MAX_KEY_LENGTH, ttl) == stored


@pytest.mark.parametrize("ttl", [0.5, -1, MAX_TTL_MS + 1, math.nan, math.inf])
def test_ttl_that_is_not_one_refused(ttl: float) -> None:
    with pytest.raises(InvalidPair) as refused:
        check_pair("ns", "key", ttl)
    assert (refused.value.field, refused.value.at) == ("ttl", "ttl")
    assert refused.value.rule == (
        f"must be 0 (never expires) or from 1 to {MAX_TTL_MS} milliseconds (10 years), got {ttl}"
    )
    assert isinstance(refused.value, BadRequest)


def test_names_too_long_for_a_url_refused() -> None:
    with pytest.raises(InvalidPair) as refused:
        check_pair("n" * (MAX_NAMESPACE_LENGTH + 1), "key", 0)
    assert str(refused.value) == "namespace must NOT have more than 100 characters (it is part of URLs)"
    with pytest.raises(InvalidPair) as refused:
        check_pair("ns", "k" * (MAX_KEY_LENGTH + 1), 0)
    assert str(refused.value) == "key must NOT have more than 100 characters (it is part of URLs)"


def test_error_messages_and_their_place_in_the_tree() -> None:
    assert str(NamespaceNotFound("chain")) == "Namespace not found: chain"
    assert isinstance(NamespaceNotFound("chain"), BadRequest)
    full = NamespaceFull("chain", 3)
    assert str(full) == (
        "Namespace chain already holds the maximum of 3 keys "
        "(Butler.keyValueStore.maxKeysPerNamespace): delete keys or raise the limit"
    )
    assert isinstance(full, LimitReached)
    assert isinstance(StoreUnavailable("down"), Unavailable)


# -- open_store ------------------------------------------------------------------------------------------


async def test_open_store_memory_with_its_limit() -> None:
    store = await open_store(KeyValueSettings(backend="memory", max_keys_per_namespace=7))
    assert type(store) is MemoryStore and store.max_keys == 7
    await store.close()


async def test_open_store_sqlite_reads_its_file(tmp_path: Path) -> None:
    settings = KeyValueSettings(
        backend="sqlite", sqlite_path=tmp_path / "kv.sqlite", max_keys_per_namespace=5
    )
    store = await open_store(settings)
    await store.set("ns", "k", "v")
    await store.close()
    again = await open_store(settings)
    assert isinstance(again, MemoryStore) and again.max_keys == 5
    assert await again.get("ns", "k") == "v"
    await again.close()


async def test_open_store_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    # A directory where the file should be: cannot be opened on any system.
    path = tmp_path / "kv.sqlite"
    path.mkdir()
    with pytest.raises(
        StoreUnavailable, match=rf"^cannot open the key-value store file {re.escape(str(path))}: "
    ):
        await open_store(KeyValueSettings(backend="sqlite", sqlite_path=path))


async def test_open_store_redis_connects_on_first_use() -> None:
    from butler.kvstore.redis_store import RedisStore

    store = await open_store(
        KeyValueSettings(
            backend="redis",
            redis_url="redis://127.0.0.1:1/0",
            redis_prefix="site2:",
            max_keys_per_namespace=4,
        )
    )
    assert isinstance(store, RedisStore) and (store.max_keys, store.prefix) == (4, "site2:")
    await store.close()


# -- the memory backend ----------------------------------------------------------------------------------


async def test_order_of_namespaces_and_keys(clock: Clock) -> None:
    store = MemoryStore()
    assert store.max_keys == 1000  # upstream's limit
    await store.set("b", "x", "1")
    await store.set("a", "y", None)  # creates the namespace only
    await store.set("b", "w", "2")
    await store.set("b", "x", "3")  # keeps its place
    assert await store.namespaces() == ["b", "a"]
    assert await store.keys("b") == ["x", "w"] and await store.keys("a") == []
    assert (await store.get("b", "x"), await store.get("b", "nope"), await store.get("a", "y")) == (
        "3",
        None,
        None,
    )


async def test_unknown_namespace(clock: Clock) -> None:
    store = MemoryStore()
    for call in (store.get("gone", "k"), store.keys("gone"), store.delete("gone", "k"), store.drop("gone")):
        with pytest.raises(NamespaceNotFound, match=r"^Namespace not found: gone$"):
            await call


async def test_delete_and_drop(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("ns", "k", "v")
    assert await store.delete("ns", "k") is True
    assert await store.delete("ns", "k") is False
    assert await store.namespaces() == ["ns"]
    await store.drop("ns")
    assert await store.namespaces() == []


async def test_expiry_to_the_millisecond(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("ns", "k", "v", ttl_ms=1500)
    await store.set("ns", "forever", "v")
    clock.now += 1.499
    assert await store.get("ns", "k") == "v" and await store.keys("ns") == ["k", "forever"]
    clock.now += 0.001
    assert await store.get("ns", "k") is None and await store.keys("ns") == ["forever"]
    # An expired key is not there to delete.
    assert await store.delete("ns", "k") is False
    clock.now += 10 * 365 * 86400
    assert await store.get("ns", "forever") == "v"
    await store.close()


async def test_delete_just_before_expiry(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("ns", "k", "v", ttl_ms=1000)
    clock.now += 0.999
    assert await store.delete("ns", "k") is True
    await store.close()


async def test_every_write_replaces_the_ttl(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("ns", "k", "v", ttl_ms=1000)
    await store.set("ns", "k", "v2")
    clock.now += 5
    assert store.purge_expired() == [] and await store.get("ns", "k") == "v2"
    await store.set("ns", "k", "v3", ttl_ms=1000)
    await store.set("ns", "k", "v4", ttl_ms=3000)
    clock.now += 1
    # The first TTL's heap entry is stale: it drops nothing.
    assert store.purge_expired() == [] and await store.get("ns", "k") == "v4"
    clock.now += 2
    assert store.purge_expired() == [("ns", "k")] and await store.keys("ns") == []
    await store.close()


async def test_purge_after_the_namespace_was_dropped(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("ns", "k", "v", ttl_ms=1000)
    await store.drop("ns")
    clock.now += 1
    assert store.purge_expired() == []
    await store.close()


async def test_purge_drops_what_is_due_in_expiry_order(clock: Clock) -> None:
    store = MemoryStore()
    await store.set("a", "late", "v", ttl_ms=3000)
    await store.set("b", "early", "v", ttl_ms=1000)
    await store.set("a", "later", "v", ttl_ms=5000)
    clock.now += 3
    assert store.purge_expired() == [("b", "early"), ("a", "late")]
    assert await store.keys("a") == ["later"] and await store.keys("b") == []
    await store.close()


async def test_full_namespace(clock: Clock) -> None:
    store = MemoryStore(max_keys=2)
    await store.set("ns", "a", "1")
    await store.set("ns", "b", "2", ttl_ms=1000)
    with pytest.raises(NamespaceFull, match=r"^Namespace ns already holds the maximum of 2 keys"):
        await store.set("ns", "c", "3")
    await store.set("ns", "a", "overwritten")  # not a new key
    await store.set("ns", "c", None)  # creates nothing
    await store.set("other", "c", "3")  # another namespace
    clock.now += 1
    # The expired key makes room, whether or not the timer has run.
    await store.set("ns", "c", "3")
    assert await store.keys("ns") == ["a", "c"]
    await store.close()


def test_expires_at(clock: Clock) -> None:
    assert expires_at(0) == 0.0 and expires_at(-5) == 0.0
    assert expires_at(1) == clock.now + 0.001 and expires_at(1500) == clock.now + 1.5


def test_writes_outside_an_event_loop_expire_on_read(clock: Clock) -> None:
    # The SQLite backend fills its cache before the loop runs; no timer can be set then.
    store = MemoryStore()
    store.apply_set("ns", "k", "v", clock.now + 1)
    assert store.apply_delete("ns", "k") is True
    store.apply_set("ns", "k", "v", clock.now + 1)
    clock.now += 1
    assert store.apply_delete("ns", "k") is False


# -- the expiry timer (real time: 50 ms TTLs) -------------------------------------------------------------


async def wait_for(condition: Callable[[], object], seconds: float = 2.0) -> None:
    await eventually(condition, seconds, lambda: "the expiry timer did not run")


async def test_timer_drops_expired_pairs_unread() -> None:
    store = Recording()
    await store.set("ns", "slow", "v", ttl_ms=10_000)
    # An earlier expiry takes over the timer.
    await store.set("ns", "fast", "v", ttl_ms=50)
    await wait_for(lambda: store.dropped)
    assert store.dropped == [("ns", "fast")] and list(store._data["ns"]) == ["slow"]
    await store.set("ns", "next", "v", ttl_ms=50)
    await wait_for(lambda: len(store.dropped) == 2)
    assert store.dropped[1] == ("ns", "next")
    await store.close()


async def test_timer_rescheduled_after_it_runs() -> None:
    store = Recording()
    await store.set("ns", "a", "v", ttl_ms=50)
    await store.set("ns", "b", "v", ttl_ms=250)
    await wait_for(lambda: store.dropped == [("ns", "a"), ("ns", "b")])
    await store.close()


async def test_timer_for_an_expiry_already_past() -> None:
    store = Recording()
    store.apply_set("ns", "k", "v", time.time() - 1)
    await wait_for(lambda: store.dropped == [("ns", "k")], seconds=0.5)
    await store.close()


async def test_close_stops_the_timer() -> None:
    store = Recording()
    await store.set("ns", "k", "v", ttl_ms=50)
    await store.close()
    await store.close()
    await asyncio.sleep(0.2)
    assert store.dropped == []
