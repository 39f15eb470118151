"""Files and folders over a real socket on a real file system, and a corpus of hostile paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartButler, base_config, free_port, write_config


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = ("from", "to", "delete", "qvd", "outside", "made")
    made = {name: tmp_path / name for name in names}
    for path in made.values():
        path.mkdir()
    (made["outside"] / "secret.txt").write_text("secret")
    return made


def files_config(folders: dict[str, Path]) -> dict[str, Any]:
    """Every file endpoint on, with ``from`` -> ``to`` approved for copies and moves, ``delete`` for deletes
    and ``qvd`` as the QVD folder."""
    document = base_config(fileCopy=True, fileMove=True, fileDelete=True, createDir=True, createDirQVD=True)
    butler = document["Butler"]
    pair = [{"fromDirectory": str(folders["from"]), "toDirectory": str(folders["to"])}]
    butler["fileCopyApprovedDirectories"] = pair
    butler["fileMoveApprovedDirectories"] = pair
    butler["fileDeleteApprovedDirectories"] = [str(folders["delete"])]
    butler["configDirectories"] = {"qvdPath": str(folders["qvd"])}
    return document


@pytest.fixture
async def files(start_butler: StartButler, folders: dict[str, Path]) -> Any:
    base = await start_butler(files_config(folders))
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with http.request(method, base + path, **kwargs) as response:
                text = await response.text()
                return response.status, (await response.json() if text else None)

        yield call


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


async def test_copy(files: Any, folders: dict[str, Path]) -> None:
    source = folders["from"] / "data.qvd"
    source.write_bytes(b"x" * 100_000)
    os.utime(source, (1_600_000_000, 1_600_000_000))
    target = folders["to"] / "sub" / "data.qvd"
    body = {"fromFile": str(source), "toFile": str(target), "overwrite": False, "preserveTimestamp": True}
    assert await files("PUT", "/v4/filecopy", json=body) == (201, body)
    assert target.read_bytes() == source.read_bytes()
    assert int(target.stat().st_mtime) == 1_600_000_000
    source.write_bytes(b"new")
    assert (await files("PUT", "/v4/filecopy", json=body))[0] == 201
    assert target.read_bytes() == b"x" * 100_000  # no overwrite: left alone
    body |= {"overwrite": "true", "preserveTimestamp": False}
    status, answer = await files("PUT", "/v4/filecopy", json=body)
    assert status == 201 and answer["overwrite"] is True
    assert target.read_bytes() == b"new"
    assert int(target.stat().st_mtime) != 1_600_000_000
    assert not [p for p in folders["to"].rglob("*.part")]  # no temporary left behind


async def test_move_and_delete(files: Any, folders: dict[str, Path]) -> None:
    source = folders["from"] / "a.txt"
    source.write_text("a")
    target = folders["to"] / "a.txt"
    body = {"fromFile": str(source), "toFile": str(target)}
    assert await files("PUT", "/v4/filemove", json=body) == (201, body | {"overwrite": False})
    assert not source.exists() and target.read_text() == "a"
    source.write_text("b")
    status, answer = await files("PUT", "/v4/filemove", json=body)
    assert (status, answer["message"]) == (400, "toFile exists and overwrite is false")
    assert source.read_text() == "b"
    assert (await files("PUT", "/v4/filemove", json=body | {"overwrite": True}))[0] == 201
    assert target.read_text() == "b"

    doomed = folders["delete"] / "old" / "file.txt"
    doomed.parent.mkdir()
    doomed.write_text("bye")
    assert await files("DELETE", "/v4/filedelete", json={"deleteFile": str(doomed)}) == (204, None)
    assert not doomed.exists()
    status, answer = await files("DELETE", "/v4/filedelete", json={"deleteFile": str(doomed)})
    assert (status, answer["message"]) == (400, "Delete failed, file does not exist")
    assert (await files("DELETE", "/v4/filedelete", json={"deleteFile": str(folders["delete"])}))[0] == 403
    assert folders["delete"].is_dir()


def other_file_system(here: Path) -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shm.stat().st_dev != here.stat().st_dev else None


async def test_cross_device_move(start_butler: StartButler, folders: dict[str, Path], tmp_path: Path) -> None:
    shm = other_file_system(tmp_path)
    if shm is None:
        pytest.skip("no second file system here")
    other = shm / f"butler-test-{os.getpid()}"
    other.mkdir()
    try:
        document = base_config(fileMove=True)
        document["Butler"]["fileMoveApprovedDirectories"] = [
            {"fromDirectory": str(folders["from"]), "toDirectory": str(other)}
        ]
        base = await start_butler(document)
        source = folders["from"] / "big.bin"
        content = os.urandom(1_000_000)
        source.write_bytes(content)
        async with aiohttp.ClientSession() as http:
            body = {"fromFile": str(source), "toFile": str(other / "big.bin")}
            async with http.put(f"{base}/v4/filemove", json=body) as response:
                assert response.status == 201
        assert (other / "big.bin").read_bytes() == content
        assert not source.exists()
        assert [p.name for p in other.iterdir()] == ["big.bin"]  # no temporary left behind
        # A symlink in an approved folder that leads elsewhere is judged by where it leads.
        (folders["to"] / "link").symlink_to(folders["outside"])
        async with aiohttp.ClientSession() as http:
            body = {"fromFile": str(folders["to"] / "link" / "secret.txt"), "toFile": str(other / "s.txt")}
            async with http.put(f"{base}/v4/filemove", json=body) as response:
                assert response.status == 403
        assert (folders["outside"] / "secret.txt").exists()
    finally:
        for item in other.iterdir():
            item.unlink()
        other.rmdir()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"toFile": "/x"}, 400, "Required parameter missing"),
        ({"fromFile": "", "toFile": "/x"}, 400, "Required parameter missing"),
        (
            {"fromFile": "//server/share/x", "toFile": "/x"},
            400,
            "UNC paths not supported for file copy operations when running Butler on non-Windows OS. "
            "Path: //server/share/x",
        ),
    ],
)
async def test_copy_bad_requests(files: Any, body: dict[str, Any], status: int, message: str) -> None:
    code, answer = await files("PUT", "/v4/filecopy", json=body)
    assert (code, answer["message"]) == (status, message)


async def test_existence_is_not_revealed_outside(files: Any, folders: dict[str, Path]) -> None:
    outside = folders["outside"]
    for name in ("secret.txt", "missing.txt"):
        status, answer = await files(
            "PUT", "/v4/filecopy", json={"fromFile": str(outside / name), "toFile": str(folders["to"] / name)}
        )
        assert (status, answer["message"]) == (403, "No approved fromDir/toDir for file copy")


async def test_create_folders(files: Any, folders: dict[str, Path]) -> None:
    made = folders["made"] / "a" / "b"
    assert await files("POST", "/v4/createdir", json={"directory": str(made)}) == (
        201,
        {"directory": str(made)},
    )
    assert made.is_dir()
    assert await files("GET", f"/v2/createDir?directory={made}c") == (200, {"directory": f"{made}c"})
    assert await files("POST", "/v4/createdirqvd", json={"directory": "abc/def"}) == (
        201,
        {"directory": "abc/def"},
    )
    assert (folders["qvd"] / "abc" / "def").is_dir()
    assert await files("GET", "/v2/createDirQVD?directory=abc/def") == (200, {"directory": "abc/def"})
    assert (await files("POST", "/v4/createdirqvd", json={"directory": "/abs/path"}))[0] == 201
    assert (folders["qvd"] / "abs" / "path").is_dir()
    for escape in ("../../escape", "a/../../qvd2", "..", "%2e%2e/x"):
        status, answer = await files("POST", "/v4/createdirqvd", json={"directory": escape})
        assert (status, answer["message"]) == (403, "Directory must be within the QVD folder")
    assert (await files("POST", "/v4/createdir", json={}))[1]["message"] == "Required parameter missing"


def hostile_paths(folders: dict[str, Path]) -> list[str]:
    """Forty paths that must never be approved as sources (documented corpus)."""
    src, out = str(folders["from"]), str(folders["outside"])
    secret = f"{out}/secret.txt"
    (folders["from"] / "escape").symlink_to(folders["outside"])
    (folders["from"] / "secret-link.txt").symlink_to(folders["outside"] / "secret.txt")
    return [
        secret,
        f"{src}/../outside/secret.txt",
        f"{src}/./../outside/secret.txt",
        f"{src}/../../outside/secret.txt",
        f"{src}//..//outside//secret.txt",
        f"{src}\\..\\outside\\secret.txt",
        f"{src}/..\\outside/secret.txt",
        f"{src}/escape/secret.txt",
        f"{src}/escape/../../outside/secret.txt",
        f"{src}/secret-link.txt",
        f"{src}/%2e%2e/outside/secret.txt",
        f"{src}/%2E%2E/outside/secret.txt",
        f"{src}%2f..%2foutside/secret.txt",
        f"{src}/..%2f..%2foutside/secret.txt",
        f"{src}/..%5coutside/secret.txt",
        f"{src}/%00/secret.txt",
        "C:\\Windows\\win.ini",
        "c:/windows/win.ini",
        "C:secret.txt",
        "D:\\data\\x.qvd",
        "../outside/secret.txt",
        "./secret.txt",
        "secret.txt",
        "outside/secret.txt",
        "~/secret.txt",
        "/etc/passwd",
        "/etc/shadow",
        "/",
        "/proc/self/environ",
        "/root/.ssh/id_rsa",
        f"{src}fromevil/secret.txt",
        f"{src}-other/secret.txt",
        f"{src[:-1]}/secret.txt",
        f"{out}/../from/../outside/secret.txt",
        f"{src}/escape/",
        f"{src}/escape/.",
        f"{src}/escape/./secret.txt",
        f"{src}/nested/../../outside/secret.txt",
        "/dev/null",
        "/tmp",
    ]


async def test_hostile_paths_are_refused(files: Any, folders: dict[str, Path], tmp_path: Path) -> None:
    corpus = hostile_paths(folders)
    assert len(corpus) >= 40
    before = snapshot(tmp_path)
    for hostile in corpus:
        for method, path, body in (
            ("PUT", "/v4/filecopy", {"fromFile": hostile, "toFile": str(folders["to"] / "x")}),
            ("PUT", "/v4/filemove", {"fromFile": hostile, "toFile": str(folders["to"] / "x")}),
            ("PUT", "/v4/filecopy", {"fromFile": str(folders["from"]), "toFile": hostile}),
            ("DELETE", "/v4/filedelete", {"deleteFile": hostile}),
        ):
            status, answer = await files(method, path, json=body)
            assert status == 403, (hostile, method, path, answer)
    assert snapshot(tmp_path) == before
    # UNC forms and NUL bytes are refused as well, with upstream's 400 and a message saying why.
    for odd in ("\\\\server\\share\\x", "//server/share/x", f"{folders['from']}/a\x00b"):
        status, _ = await files(
            "PUT", "/v4/filecopy", json={"fromFile": odd, "toFile": str(folders["to"] / "x")}
        )
        assert status == 400
    assert snapshot(tmp_path) == before


def _write_big(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with path.open("wb") as out:
        for _ in range(size >> 20):
            out.write(chunk)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


async def test_killed_cross_device_move_keeps_the_source(
    folders: dict[str, Path], tmp_path: Path, butler_process: Any
) -> None:
    """Butler is killed while it copies a file to another file system: the source is intact."""
    shm = other_file_system(tmp_path)
    if shm is None:
        pytest.skip("no second file system here")
    other = shm / f"butler-kill-{os.getpid()}"
    other.mkdir()
    try:
        source = folders["from"] / "big.bin"
        await asyncio.to_thread(_write_big, source, 400 << 20)
        before = await asyncio.to_thread(_digest, source)
        port = free_port()
        document = base_config(fileMove=True)
        document["Butler"]["restServerConfig"]["serverPort"] = port
        document["Butler"]["fileMoveApprovedDirectories"] = [
            {"fromDirectory": str(folders["from"]), "toDirectory": str(other)}
        ]
        process = butler_process("serve", "-c", str(write_config(tmp_path / "b.yaml", document)))
        await asyncio.to_thread(process.wait_for_port, port)
        async with aiohttp.ClientSession() as http:
            move = asyncio.ensure_future(
                http.put(
                    f"http://127.0.0.1:{port}/v4/filemove",
                    json={"fromFile": str(source), "toFile": str(other / "big.bin")},
                )
            )
            # Killed as soon as the copy has begun: its temporary file is there (a fixed delay was
            # sometimes enough for the whole move on a fast disk).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if any(other.iterdir()):
                    break
                await asyncio.sleep(0.001)
            process.proc.send_signal(signal.SIGKILL)
            with pytest.raises(aiohttp.ClientError):
                await move
        assert await asyncio.to_thread(_digest, source) == before
        assert not (other / "big.bin").exists()  # never a half file under the target name
    finally:
        for item in other.iterdir():
            item.unlink()
        other.rmdir()


async def test_createdir_limited_to_approved_folders(
    start_butler: StartButler, folders: dict[str, Path]
) -> None:
    document = base_config(createDir=True)
    document["Butler"]["createDirApprovedDirectories"] = [str(folders["made"])]
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v4/createdir", json={"directory": str(folders["made"] / "x" / "y")}
        ) as r:
            assert r.status == 201
        for outside in (str(folders["outside"] / "x"), f"{folders['made']}/../outside/y", "relative/dir"):
            async with http.post(f"{base}/v4/createdir", json={"directory": outside}) as r:
                assert r.status == 403
    assert (folders["made"] / "x" / "y").is_dir()
    assert not (folders["outside"] / "x").exists() and not (folders["outside"] / "y").exists()


async def test_copy_a_folder(files: Any, folders: dict[str, Path]) -> None:
    tree = folders["from"] / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    body = {"fromFile": str(tree), "toFile": str(folders["to"] / "tree")}
    assert (await files("PUT", "/v4/filecopy", json=body))[0] == 201
    assert (folders["to"] / "tree" / "sub" / "a.txt").read_text() == "a"


async def test_special_files_are_refused_without_hanging(files: Any, folders: dict[str, Path]) -> None:
    pipe = folders["from"] / "pipe"
    os.mkfifo(pipe)
    body = {"fromFile": str(pipe), "toFile": str(folders["to"] / "pipe")}
    for path in ("/v4/filecopy", "/v4/filemove"):
        status, answer = await asyncio.wait_for(files("PUT", path, json=body), 10)
        assert (status, answer["message"]) == (400, "fromFile is not a regular file or a folder")
    assert pipe.exists() and not (folders["to"] / "pipe").exists()


async def test_overlong_names_are_bad_requests(files: Any, folders: dict[str, Path]) -> None:
    long = "n" * 300
    source = folders["from"] / "a.txt"
    source.write_text("a")
    for method, path, body in (
        (
            "PUT",
            "/v4/filecopy",
            {"fromFile": f"{folders['from']}/{long}/x", "toFile": str(folders["to"] / "x")},
        ),
        ("PUT", "/v4/filecopy", {"fromFile": str(source), "toFile": f"{folders['to']}/{long}/x"}),
        ("PUT", "/v4/filemove", {"fromFile": str(source), "toFile": f"{folders['to']}/{long}"}),
        ("DELETE", "/v4/filedelete", {"deleteFile": f"{folders['delete']}/{long}"}),
        ("POST", "/v4/createdirqvd", {"directory": f"a/{long}"}),
    ):
        status, answer = await files(method, path, json=body)
        assert status == 400, (path, answer)
        assert answer["message"].endswith("has a name longer than the file system allows"), answer
    assert source.read_text() == "a"


async def test_createdirqvd_answers_the_folder_it_made(files: Any, folders: dict[str, Path]) -> None:
    assert await files("POST", "/v4/createdirqvd", json={"directory": "/a/../b\\c"}) == (
        201,
        {"directory": "b/c"},
    )
    assert (folders["qvd"] / "b" / "c").is_dir()
    assert await files("GET", "/v2/createDirQVD", params={"directory": "x/./y//z/"}) == (
        200,
        {"directory": "x/y/z"},
    )
    assert (folders["qvd"] / "x" / "y" / "z").is_dir()


async def test_links_are_followed_only_inside_their_approved_folder(
    files: Any, folders: dict[str, Path]
) -> None:
    inner = folders["from"] / "inner"
    inner.mkdir()
    (inner / "real.txt").write_text("inside")
    (folders["from"] / "alias").symlink_to("inner")
    (folders["from"] / "absolute.txt").symlink_to(inner / "real.txt")
    for name in ("alias/real.txt", "absolute.txt"):
        body = {"fromFile": f"{folders['from']}/{name}", "toFile": f"{folders['to']}/{name}"}
        assert (await files("PUT", "/v4/filecopy", json=body))[0] == 201
        assert (folders["to"] / name).read_text() == "inside"
    # A link into another approved folder leaves the folder it was met in.
    (folders["to"] / "across").symlink_to(folders["from"])
    body = {"fromFile": str(inner / "real.txt"), "toFile": str(folders["to"] / "across" / "x")}
    assert (await files("PUT", "/v4/filecopy", json=body))[0] == 403
    assert not (folders["from"] / "x").exists()
    # A folder holding a link that leads outside is not copied.
    tree = folders["from"] / "tree"
    tree.mkdir()
    (tree / "leak").symlink_to(folders["outside"] / "secret.txt")
    status, answer = await files(
        "PUT", "/v4/filecopy", json={"fromFile": str(tree), "toFile": str(folders["to"] / "tree")}
    )
    assert (status, answer["message"]) == (
        400,
        "fromFile holds a symbolic link (leak); only files and folders are copied",
    )
    assert sorted(p.name for p in folders["to"].iterdir()) == ["absolute.txt", "across", "alias"]
    # Deleting a link deletes the link, not what it leads to.
    (folders["delete"] / "link").symlink_to(folders["outside"] / "secret.txt")
    assert (await files("DELETE", "/v4/filedelete", json={"deleteFile": str(folders["delete"] / "link")}))[
        0
    ] == 204
    assert not (folders["delete"] / "link").is_symlink()
    assert (folders["outside"] / "secret.txt").read_text() == "secret"


async def test_a_file_does_not_replace_a_folder(files: Any, folders: dict[str, Path]) -> None:
    source = folders["from"] / "report.qvd"
    source.write_text("report")
    archive = folders["to"] / "archive"
    (archive / "2024").mkdir(parents=True)
    (archive / "2024" / "report.qvd").write_text("kept")
    body = {"fromFile": str(source), "toFile": f"{archive}/", "overwrite": True}
    assert await files("PUT", "/v4/filecopy", json=body) == (
        400,
        {"statusCode": 400, "error": "Bad Request", "message": "toFile is a folder where a file is expected"},
    )
    assert (archive / "2024" / "report.qvd").read_text() == "kept"
    assert sorted(p.name for p in folders["to"].iterdir()) == ["archive"]  # no temporary left behind


def _deep_tree(top: Path, depth: int) -> list[Path]:
    """Folders ``top/d/d/...``, made one at a time (os.makedirs and shutil.rmtree recurse per level)."""
    made = [top]
    for _ in range(depth):
        made.append(made[-1] / "d")
    for folder in made:
        folder.mkdir()
    return made


async def test_deep_folders(files: Any, folders: dict[str, Path]) -> None:
    # Many new levels at once are made, as upstream makes them.
    status, answer = await files("POST", "/v4/createdirqvd", json={"directory": "/".join(["n"] * 60)})
    assert status == 201, answer
    assert (folders["qvd"] / Path(*["n"] * 60)).is_dir()
    status, answer = await files("POST", "/v4/createdirqvd", json={"directory": "/".join(["m"] * 129)})
    assert (status, answer["message"]) == (400, "directory goes deeper than 128 folders")
    assert not (folders["qvd"] / "m").exists()
    # A tree far deeper than anyone needs, made by whoever writes in an approved folder, is a 400.
    trees = [_deep_tree(folders[name] / "top", 1100) for name in ("from", "delete")]
    try:
        body = {"fromFile": str(folders["from"] / "top"), "toFile": str(folders["to"] / "top")}
        status, answer = await files("PUT", "/v4/filecopy", json=body)
        assert (status, answer["message"]) == (400, "fromFile goes deeper than 128 folders")
        assert list(folders["to"].iterdir()) == []  # no half copy left behind
        body = {"deleteFile": str(folders["delete"] / "top")}
        status, answer = await files("DELETE", "/v4/filedelete", json=body)
        assert (status, answer["message"]) == (400, "deleteFile goes deeper than 128 folders")
    finally:
        for tree in trees:
            for folder in reversed(tree):
                folder.rmdir()


async def test_move_onto_another_link_to_the_same_file(files: Any, folders: dict[str, Path]) -> None:
    source = folders["from"] / "a.txt"
    source.write_text("a")
    os.link(source, folders["to"] / "a.txt")
    body = {"fromFile": str(source), "toFile": str(folders["to"] / "a.txt"), "overwrite": True}
    assert (await files("PUT", "/v4/filemove", json=body))[0] == 201
    assert not source.exists()
    assert [p.name for p in folders["to"].iterdir()] == ["a.txt"]  # no temporary left behind


async def test_unrestricted_createdir_refuses_nul(files: Any, folders: dict[str, Path]) -> None:
    for method, path, kwargs in (
        ("POST", "/v4/createdir", {"json": {"directory": f"{folders['made']}/a\x00b"}}),
        ("GET", "/v2/createDir", {"params": {"directory": f"{folders['made']}/a\x00b"}}),
    ):
        status, answer = await files(method, path, **kwargs)
        assert (status, answer["message"]) == (400, "directory contains a NUL byte"), path
    assert list(folders["made"].iterdir()) == []


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions that bind the user"
)
async def test_an_unreadable_part_of_a_copied_folder_is_blamed_on_the_source(
    files: Any, folders: dict[str, Path]
) -> None:
    locked = folders["from"] / "tree" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        body = {"fromFile": str(folders["from"] / "tree"), "toFile": str(folders["to"] / "tree")}
        assert await files("PUT", "/v4/filecopy", json=body) == (
            403,
            {
                "statusCode": 403,
                "error": "Forbidden",
                "message": "fromFile cannot be used: permission denied",
            },
        )
        assert list(folders["to"].iterdir()) == []
    finally:
        locked.chmod(0o700)
