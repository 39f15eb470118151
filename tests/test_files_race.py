"""File operations raced by a process that swaps entries of the approved folders for links to outside.

A swapper process keeps exchanging a real file or folder with a symbolic link to the same name outside
(``renameat2(RENAME_EXCHANGE)`` where libc has it, else three renames), while several clients call one file
endpoint at once. Whatever the timing, nothing outside may be read, created, changed or deleted, and no
request may answer 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartButler
from tests.test_files import files_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the swapper needs POSIX symbolic links")

RACE_SECONDS = 10.5
CLIENTS = 6

SWAPPER = r"""
import ctypes, errno, json, os, sys, time

pairs, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
renameat2 = getattr(libc, "renameat2", None)
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a, b):
    global renameat2
    if renameat2 is not None:
        if renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), a)
        renameat2 = None
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)


def write(name, folder=None):
    # Never through a link: Butler may put one back here at any moment.
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, dir_fd=folder)
    os.write(out, b"inside")
    os.close(out)


def make_real(path, kind):
    if kind == "file":
        return write(path)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        write("f", folder)
    finally:
        os.close(folder)


def replenish(real, alt, kind, outside):
    # Butler moves and deletes what it is asked to: put back a real entry and a link, whichever is gone.
    there = [name for name in (real, alt) if os.path.lexists(name)]
    links = [name for name in there if os.path.islink(name)]
    if not links:
        spare = alt if alt not in there else real
        if os.path.lexists(spare):
            return
        os.symlink(outside, spare)
    for name in (real, alt):
        if not os.path.lexists(name):
            make_real(name, kind)
        elif kind == "dir" and not os.path.islink(name) and not os.path.lexists(os.path.join(name, "f")):
            make_real(name, kind)


swaps, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    for real, alt, kind, outside in pairs:
        try:
            exchange(real, alt)
            swaps += 1
            if swaps % 64:
                continue
        except OSError:
            pass
        try:
            replenish(real, alt, kind, outside)
        except OSError:
            pass
print(swaps)
"""


def outside_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: kind, size, modification time and content."""
    state: dict[str, tuple[Any, ...]] = {".": ("dir", root.stat().st_mtime_ns)}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            info = path.lstat()
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
            state[str(path.relative_to(root))] = (
                stat.S_IFMT(info.st_mode),
                info.st_size,
                info.st_mtime_ns,
                content,
            )
    return state


def canary_copies(roots: list[Path], canary: bytes) -> list[str]:
    found = []
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder, name)
                if stat.S_ISREG(path.lstat().st_mode) and canary in path.read_bytes():
                    found.append(str(path))
    return found


Request = tuple[str, str, dict[str, Any]]


def layout(tmp_path: Path, canary: bytes) -> dict[str, Path]:
    places = {name: tmp_path / name for name in ("from", "to", "delete", "made", "qvd", "outside")}
    for path in places.values():
        path.mkdir()
    outside = places["outside"]
    (outside / "secret.txt").write_bytes(canary)
    (outside / "dir").mkdir()
    (outside / "dir" / "f").write_bytes(canary)
    (outside / "dir" / "keep").mkdir()
    return places


def swapped(real: Path, kind: str, target: Path) -> list[str]:
    """Make ``real`` a real entry and ``real.alt`` a link to ``target``; the swapper exchanges the two."""
    if kind == "file":
        real.write_bytes(b"inside")
    else:
        real.mkdir()
        (real / "f").write_bytes(b"inside")
    alt = real.with_name(real.name + ".alt")
    alt.symlink_to(target)
    return [str(real), str(alt), kind, str(target)]


def scenario(operation: str, places: dict[str, Path]) -> tuple[list[list[str]], Callable[[int], Request]]:
    """The entries swapped and the requests made for one operation."""
    source, to, outside = places["from"], places["to"], places["outside"]
    secret, elsewhere = outside / "secret.txt", outside / "dir"
    if operation == "filecopy":
        pairs = [
            swapped(source / "x", "file", secret),
            swapped(source / "d", "dir", elsewhere),
            swapped(to / "t", "dir", elsewhere),
        ]

        def request(i: int) -> Request:
            from_file, to_file = random.choice(
                [
                    (source / "x", to / f"c{i % 16}"),
                    (source / "d" / "f", to / "t" / f"c{i % 16}"),
                    (source / "d", to / "t" / f"tree{i % 4}"),
                ]
            )
            body = {"fromFile": str(from_file), "toFile": str(to_file), "overwrite": True}
            return "PUT", "/v4/filecopy", body

    elif operation == "filemove":
        pairs = [
            swapped(source / "x", "file", secret),
            swapped(source / "d", "dir", elsewhere),
            swapped(to / "t", "dir", elsewhere),
        ]

        def request(i: int) -> Request:
            from_file, to_file = random.choice(
                [(source / "x", to / "t" / f"m{i % 16}"), (source / "d" / "f", to / f"m{i % 16}")]
            )
            body = {"fromFile": str(from_file), "toFile": str(to_file), "overwrite": True}
            return "PUT", "/v4/filemove", body

    elif operation == "filedelete":
        doomed = places["delete"]
        pairs = [swapped(doomed / "x", "file", secret), swapped(doomed / "d", "dir", elsewhere)]

        def request(i: int) -> Request:
            path = random.choice([doomed / "x", doomed / "d" / "f", doomed / "d"])
            return "DELETE", "/v4/filedelete", {"deleteFile": str(path)}

    elif operation == "createdir":
        made = places["made"]
        pairs = [swapped(made / "d", "dir", elsewhere)]

        def request(i: int) -> Request:
            return "POST", "/v4/createdir", {"directory": str(made / "d" / f"n{i}" / "sub")}

    else:
        pairs = [swapped(places["qvd"] / "d", "dir", elsewhere)]

        def request(i: int) -> Request:
            return "POST", "/v4/createdirqvd", {"directory": f"d/n{i}/sub"}

    return pairs, request


@pytest.mark.parametrize("operation", ["filecopy", "filemove", "filedelete", "createdir", "createdirqvd"])
async def test_swapped_links_lead_nowhere(start_butler: StartButler, tmp_path: Path, operation: str) -> None:
    random.seed(operation)
    canary = b"CANARY-" + os.urandom(16).hex().encode()
    places = layout(tmp_path, canary)
    document = files_config(places)
    butler = document["Butler"]
    butler["createDirApprovedDirectories"] = [str(places["made"])]
    base = await start_butler(document)
    pairs, request = scenario(operation, places)
    before = outside_state(places["outside"])

    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, json.dumps(pairs), str(RACE_SECONDS), stdout=asyncio.subprocess.PIPE
    )
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    numbers = iter(range(10**9))

    async def client(http: aiohttp.ClientSession) -> None:
        while swapper.returncode is None:
            method, path, body = request(next(numbers))
            async with http.request(method, base + path, json=body) as response:
                answer = await response.text()
                statuses[response.status] += 1
                if response.status >= 500:
                    failures.append(f"{method} {path} {body}: {answer}")

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.ensure_future(client(http)) for _ in range(CLIENTS)]
        output, _ = await swapper.communicate()
        await asyncio.gather(*clients)

    swaps = int(output)
    assert swaps > 10_000, swaps
    approved = [places[name] for name in ("from", "to", "delete", "made", "qvd")]
    assert canary_copies(approved, canary) == []
    assert outside_state(places["outside"]) == before
    assert failures == [], statuses
    assert statuses[201] + statuses[204] > 20, statuses  # the operation really ran meanwhile
