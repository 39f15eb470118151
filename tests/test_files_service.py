"""The file service called directly on real temporary folders: every answer checked exactly, fast.

The same operations over HTTP, and the hostile-path corpus, are in test_files.py; races between a request
and someone changing the folders under it are in test_files_race.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from butler.config.settings import FileSettings
from butler.errors import AccessDenied, BadRequest, Conflict
from butler.files import (
    MAX_DEPTH,
    MAX_PATH,
    FileAccessDenied,
    FileConflict,
    FileRequestError,
    FileService,
    _plain,
    _temporary,
    normalize,
)

OLD = 1_600_000_000


def tree(root: Path) -> dict[str, str]:
    """Everything below ``root``: files by content, folders as ``/``, links as ``-> target``."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[name] = "/"
        elif not path.is_file():
            found[name] = "|"
        else:
            found[name] = path.read_text()
    return found


def chain(top: Path, depth: int) -> Path:
    """``top`` and ``depth`` folders below it, one in another; returns the deepest."""
    deepest = top.joinpath(*["d"] * depth)
    deepest.mkdir(parents=True)
    return deepest


class Folders:
    """The approved folders of one test, all below its temporary folder, and one that is not approved."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.source, self.target, self.trash, self.qvd, self.made, self.outside = (
            base / name for name in ("from", "to", "delete", "qvd", "made", "outside")
        )
        for folder in (self.source, self.target, self.trash, self.qvd, self.made, self.outside):
            folder.mkdir()
        (self.outside / "secret.txt").write_text("secret")


@pytest.fixture
def at(tmp_path: Path) -> Folders:
    return Folders(tmp_path)


def service(
    at: Folders,
    *,
    copy: tuple[tuple[Path, Path], ...] | None = None,
    move: tuple[tuple[Path, Path], ...] | None = None,
    delete: tuple[Path, ...] | None = None,
    qvd: Path | None = None,
    create_dir: tuple[Path, ...] | None = (),
) -> FileService:
    pair = ((at.source, at.target),)
    return FileService(
        FileSettings(
            copy=pair if copy is None else copy,
            move=pair if move is None else move,
            delete=(at.trash,) if delete is None else delete,
            qvd_path=qvd or at.qvd,
            create_dir=(at.made,) if create_dir == () else create_dir,
        )
    )


async def refused(call: Awaitable[object], kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as caught:
        await call
    assert type(caught.value) is kind
    assert str(caught.value) == message


# -- path spellings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spelled"),
    [
        ("", "."),
        ("a\\b\\..\\c", "a/c"),
        ("/x/./y//z/", "/x/y/z"),
        ("/..", "/"),
        # A UNC-like start keeps a mark of its own, never becoming the same as a rooted path.
        ("//server/share/../x", "///server/x"),
        ("\\\\server\\share", "///server/share"),
    ],
)
def test_normalize(raw: str, spelled: str) -> None:
    assert normalize(raw) == spelled


@pytest.mark.parametrize(
    ("final", "plain"),
    [
        ("\\\\?\\UNC\\server\\share\\x", "\\\\server\\share\\x"),
        ("\\??\\UNC\\server\\share", "\\\\server\\share"),
        ("\\\\?\\C:\\data\\x.qvd", "C:\\data\\x.qvd"),
        ("\\??\\C:\\data", "C:\\data"),
        ("C:\\data", "C:\\data"),
        ("\\\\server\\share", "\\\\server\\share"),
    ],
)
def test_final_paths_lose_their_prefix(final: str, plain: str) -> None:
    assert _plain(final) == plain


def test_temporary_names_stay_short_and_unique() -> None:
    long = "n" * 255
    first, second = _temporary(long), _temporary(long)
    assert re.fullmatch(rf"\.{'n' * 100}\.butler-[0-9a-f]{{8}}\.part", first)
    assert first != second
    assert re.fullmatch(r"\.a\.txt\.butler-[0-9a-f]{8}\.part", _temporary("a.txt"))


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        ("/a\x00b", FileRequestError, "{op} contains a NUL byte"),
        ("/" + "a" * MAX_PATH, FileRequestError, "{op} is longer than 4096 characters"),
        (
            "//server/share/x",
            FileRequestError,
            "UNC paths not supported for file {op} operations when running Butler on non-Windows OS. "
            "Path: //server/share/x",
        ),
        ("C:/data/x", FileAccessDenied, "C:/data/x: Windows drive paths cannot be approved on this system"),
        ("/a/%2E%2e/b", FileAccessDenied, "/a/%2E%2e/b: percent-encoded path characters are not accepted"),
        ("/a%5cb", FileAccessDenied, "/a%5cb: percent-encoded path characters are not accepted"),
        ("rel/x", FileAccessDenied, "rel/x: only absolute paths can be approved"),
        ("", FileAccessDenied, ": only absolute paths can be approved"),
    ],
)
async def test_paths_that_are_never_approved(
    at: Folders, raw: str, kind: type[Exception], message: str
) -> None:
    files = service(at)
    good = str(at.source / "a.txt")
    (at.source / "a.txt").write_text("a")
    await refused(files.copy(raw, str(at.target / "a"), False, False), kind, message.format(op="copy"))
    await refused(files.copy(good, raw, False, False), kind, message.format(op="copy"))
    await refused(files.move(raw, str(at.target / "a"), False), kind, message.format(op="move"))
    await refused(files.move(good, raw, False), kind, message.format(op="move"))
    await refused(files.delete(raw), kind, message.format(op="copy"))
    await refused(files.create_dir(raw), kind, message.format(op="create"))
    assert tree(at.target) == {}
    assert tree(at.source) == {"a.txt": "a"}


async def test_a_path_of_the_longest_length_is_looked_at(at: Folders) -> None:
    longest = f"{at.source}/" + "n" * (MAX_PATH - len(str(at.source)) - 1)
    assert len(longest) == MAX_PATH
    await refused(
        service(at).copy(longest, str(at.target / "x"), False, False),
        FileRequestError,
        "fromFile has a name longer than the file system allows",
    )


def test_errors_are_the_api_s_kinds() -> None:
    assert issubclass(FileRequestError, BadRequest) and issubclass(FileRequestError, ValueError)
    assert issubclass(FileAccessDenied, AccessDenied)
    assert issubclass(FileConflict, Conflict)


# -- copy ------------------------------------------------------------------------------------------------


async def test_copy_a_file(at: Folders) -> None:
    source = at.source / "data.qvd"
    source.write_text("data")
    source.chmod(0o640)
    os.utime(source, (OLD, OLD))
    files = service(at)
    answer = await files.copy(f"{at.source}//./data.qvd", f"{at.target}\\sub\\..\\new\\data.qvd", False, True)
    assert answer == (str(source), f"{at.target}/new/data.qvd")
    copied = at.target / "new" / "data.qvd"
    assert tree(at.target) == {"new": "/", "new/data.qvd": "data"}
    assert copied.stat().st_mtime == OLD
    assert stat.S_IMODE(copied.stat().st_mode) == 0o640
    assert tree(at.source) == {"data.qvd": "data"}


async def test_copy_without_preserving_timestamps(at: Folders) -> None:
    source = at.source / "data.qvd"
    source.write_text("data")
    source.chmod(0o640)
    os.utime(source, (OLD, OLD))
    await service(at).copy(str(source), str(at.target / "data.qvd"), False, False)
    copied = (at.target / "data.qvd").stat()
    assert copied.st_mtime > OLD + 1_000_000
    assert stat.S_IMODE(copied.st_mode) != 0o640


async def test_copy_leaves_an_existing_target_unless_told_to_overwrite(at: Folders) -> None:
    source = at.source / "a.txt"
    source.write_text("new")
    (at.target / "a.txt").write_text("old")
    files = service(at)
    assert await files.copy(str(source), str(at.target / "a.txt"), False, False) == (
        str(source),
        str(at.target / "a.txt"),
    )
    assert tree(at.target) == {"a.txt": "old"}
    await files.copy(str(source), str(at.target / "a.txt"), True, False)
    assert tree(at.target) == {"a.txt": "new"}


async def test_copy_a_folder(at: Folders) -> None:
    (at.source / "tree" / "sub" / "empty").mkdir(parents=True)
    (at.source / "tree" / "a.txt").write_text("a")
    (at.source / "tree" / "sub" / "b.txt").write_text("b")
    os.utime(at.source / "tree" / "sub" / "b.txt", (OLD, OLD))
    await service(at).copy(str(at.source / "tree"), str(at.target / "copy"), False, True)
    assert tree(at.target) == {
        "copy": "/",
        "copy/a.txt": "a",
        "copy/sub": "/",
        "copy/sub/b.txt": "b",
        "copy/sub/empty": "/",
    }
    assert (at.target / "copy" / "sub" / "b.txt").stat().st_mtime == OLD


async def test_a_folder_replaces_a_folder_when_overwriting(at: Folders) -> None:
    (at.source / "tree").mkdir()
    (at.source / "tree" / "new.txt").write_text("new")
    (at.target / "tree" / "deep").mkdir(parents=True)
    (at.target / "tree" / "deep" / "old.txt").write_text("old")
    files = service(at)
    await files.copy(str(at.source / "tree"), str(at.target / "tree"), False, False)
    assert tree(at.target) == {"tree": "/", "tree/deep": "/", "tree/deep/old.txt": "old"}
    await files.copy(str(at.source / "tree"), str(at.target / "tree"), True, False)
    assert tree(at.target) == {"tree": "/", "tree/new.txt": "new"}


async def test_a_folder_copied_into_itself_is_copied_once(at: Folders) -> None:
    names = [f"file{number:02}.txt" for number in range(20)]
    base = at.base / "base"
    base.mkdir()
    for name in names:
        (base / name).write_text(name)
    files = service(at, copy=((at.base, at.base),))
    await files.copy(str(base), str(base / "copy"), False, False)
    expected = {name: name for name in names}
    assert tree(base) == expected | {"copy": "/"} | {f"copy/{name}": name for name in names}


async def test_a_file_does_not_replace_a_folder(at: Folders) -> None:
    (at.source / "a.txt").write_text("a")
    (at.target / "folder" / "inner").mkdir(parents=True)
    await refused(
        service(at).copy(str(at.source / "a.txt"), str(at.target / "folder"), True, False),
        FileRequestError,
        "toFile is a folder where a file is expected",
    )
    assert tree(at.target) == {"folder": "/", "folder/inner": "/"}


async def test_copy_refusals(at: Folders) -> None:
    files = service(at)
    os.mkfifo(at.source / "pipe")
    (at.source / "a.txt").write_text("a")
    (at.target / "file").write_text("file")
    (at.source / "tree").mkdir()
    (at.source / "tree" / "leak").symlink_to(at.outside / "secret.txt")
    cases: list[tuple[str, str, type[Exception], str]] = [
        ("pipe", "pipe", FileRequestError, "fromFile is not a regular file or a folder"),
        ("missing", "x", FileRequestError, "fromFile does not exist"),
        ("a.txt/x", "x", FileRequestError, "fromFile has a file where a folder is expected"),
        ("a.txt", "file/x", FileRequestError, "toFile has a file where a folder is expected"),
        ("a.txt", "n" * 300, FileRequestError, "toFile has a name longer than the file system allows"),
        (
            "tree",
            "tree",
            FileRequestError,
            "fromFile holds a symbolic link (leak); only files and folders are copied",
        ),
    ]
    for source, target, kind, message in cases:
        call = files.copy(f"{at.source}/{source}", f"{at.target}/{target}", True, False)
        await refused(call, kind, message)
    assert tree(at.target) == {"file": "file"}


async def test_existence_is_not_told_outside_approved_pairs(at: Folders) -> None:
    files = service(at)
    (at.source / "a.txt").write_text("a")
    for source, target in (
        (f"{at.source}/missing.txt", f"{at.outside}/x"),
        (f"{at.source}/a.txt", f"{at.outside}/x"),
        (f"{at.outside}/secret.txt", f"{at.target}/x"),
        (str(at.source), f"{at.target}/x"),
        (f"{at.source}/a.txt", str(at.target)),
        (f"{str(at.source).upper()}/a.txt", f"{at.target}/x"),
        (f"{at.source}x/a.txt", f"{at.target}/x"),
    ):
        await refused(
            files.copy(source, target, True, False),
            FileAccessDenied,
            "No approved fromDir/toDir for file copy",
        )
        await refused(
            files.move(source, target, True), FileAccessDenied, "No approved fromDir/toDir for file move"
        )
    assert tree(at.target) == {}
    assert tree(at.outside) == {"secret.txt": "secret"}
    assert tree(at.source) == {"a.txt": "a"}


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="no /proc here")
async def test_a_file_that_reads_longer_than_its_size_is_a_conflict(at: Folders) -> None:
    # Files of /proc say they are empty and are not: the copy is checked against the size.
    files = service(at, copy=((Path("/proc"), at.target),))
    await refused(
        files.copy("/proc/version", str(at.target / "version"), False, False),
        FileConflict,
        "fromFile changed while Butler was copying it",
    )
    assert tree(at.target) == {}


# -- links -----------------------------------------------------------------------------------------------


async def test_links_inside_the_approved_folder_are_followed(at: Folders) -> None:
    (at.source / "x.txt").write_text("top")
    (at.source / "other").mkdir()
    (at.source / "other" / "x.txt").write_text("other")
    (at.source / "my dir").mkdir()
    (at.source / "my dir" / "x.txt").write_text("spaced")
    deep = at.source / "a" / "b"
    deep.mkdir(parents=True)
    (at.source / "a" / "x.txt").write_text("a")
    (at.source / "a\\x.txt").write_text("backslash")
    links = {
        "relative": "other/x.txt",
        "spaced": "my dir/x.txt",
        "backslash": "a\\x.txt",
        "absolute": str(at.source / "other" / "x.txt"),
        "a/b/up": "../../x.txt",
        "a/b/sideways": "../../other/x.txt",
        "a/b/rooted": str(at.source / "x.txt"),
        "a/b/dot": "./../x.txt",
    }
    for name, target in links.items():
        (at.source / name).symlink_to(target)
    files = service(at)
    for name in links:
        await files.copy(f"{at.source}/{name}", f"{at.target}/{name.replace('/', '-')}", False, False)
    assert tree(at.target) == {
        "relative": "other",
        "spaced": "spaced",
        "backslash": "backslash",
        "absolute": "other",
        "a-b-up": "top",
        "a-b-sideways": "other",
        "a-b-rooted": "top",
        "a-b-dot": "a",
    }


async def test_links_leading_out_of_the_approved_folder_are_refused(at: Folders) -> None:
    (at.source / "sub").mkdir()
    (at.source / "x.txt").write_text("x")
    links = {
        "escape": str(at.outside),
        "sub/up": "../../outside/secret.txt",
        "sub/root": "..",
        "root": str(at.source),
        "dot": ".",
        "through": "escape/secret.txt",
    }
    for name, target in links.items():
        (at.source / name).symlink_to(target)
    files = service(at)
    for name in ("escape/secret.txt", "sub/up", "sub/root", "root", "dot", "through"):
        await refused(
            files.copy(f"{at.source}/{name}", f"{at.target}/x", True, False),
            FileAccessDenied,
            "No approved fromDir/toDir for file copy",
        )
    # A link in the target's folders is followed only while it stays in the approved target folder.
    (at.target / "away").symlink_to(at.outside)
    await refused(
        files.copy(f"{at.source}/x.txt", f"{at.target}/away/x.txt", True, False),
        FileAccessDenied,
        "No approved fromDir/toDir for file copy",
    )
    assert tree(at.outside) == {"secret.txt": "secret"}
    assert tree(at.target) == {"away": f"-> {at.outside}"}


async def test_a_link_to_a_folder_above_names_that_folder(at: Folders) -> None:
    deepest = at.source / "a" / "b" / "c" / "d"
    deepest.mkdir(parents=True)
    (deepest / "up").symlink_to("..")
    (deepest / "f.txt").write_text("f")
    files = service(at)
    # from/a/b/c/d/up is from/a/b/c: moved as a whole, link and all.
    await files.move(f"{deepest}/up", f"{at.target}/moved", False)
    assert tree(at.target) == {
        "moved": "/",
        "moved/d": "/",
        "moved/d/f.txt": "f",
        "moved/d/up": "-> ..",
    }
    assert tree(at.source) == {"a": "/", "a/b": "/"}


async def test_a_link_where_the_target_goes_is_replaced_not_followed(at: Folders) -> None:
    (at.source / "a.txt").write_text("a")
    (at.target / "link").symlink_to(at.outside / "secret.txt")
    await service(at).copy(f"{at.source}/a.txt", f"{at.target}/link", True, False)
    assert tree(at.target) == {"link": "a"}
    assert tree(at.outside) == {"secret.txt": "secret"}


@pytest.mark.parametrize(("links", "followed"), [(40, True), (41, False)])
async def test_links_followed_for_one_path_are_limited(at: Folders, links: int, followed: bool) -> None:
    (at.source / "x.txt").write_text("x")
    for number in range(links):
        (at.source / f"l{number}").symlink_to(f"l{number + 1}" if number + 1 < links else "x.txt")
    files = service(at)
    call = files.copy(f"{at.source}/l0", f"{at.target}/x.txt", False, False)
    if followed:
        await call
        assert tree(at.target) == {"x.txt": "x"}
    else:
        await refused(call, FileRequestError, "fromFile has too many levels of symbolic links")
        assert tree(at.target) == {}


async def test_link_loops_are_told_about_the_path_they_are_in(at: Folders) -> None:
    for folder in (at.source, at.target, at.trash, at.qvd, at.made):
        (folder / "loop").symlink_to("loop")
    (at.source / "a.txt").write_text("a")
    files = service(at)
    good, bad_source, bad_target = f"{at.source}/a.txt", f"{at.source}/loop/x", f"{at.target}/loop/x"
    message = "{} has too many levels of symbolic links"
    await refused(
        files.copy(bad_source, bad_target, False, False), FileRequestError, message.format("fromFile")
    )
    await refused(files.copy(good, bad_target, False, False), FileRequestError, message.format("toFile"))
    await refused(files.move(bad_source, bad_target, False), FileRequestError, message.format("fromFile"))
    await refused(files.move(good, bad_target, False), FileRequestError, message.format("toFile"))
    await refused(files.delete(f"{at.trash}/loop/x"), FileRequestError, message.format("deleteFile"))
    await refused(files.create_dir(f"{at.made}/loop/x"), FileRequestError, message.format("directory"))
    await refused(files.create_qvd_dir("loop/x"), FileRequestError, message.format("directory"))


async def test_an_approved_folder_reached_by_a_link(at: Folders) -> None:
    (at.base / "links").mkdir()
    alias = at.base / "links" / "from"
    alias.symlink_to(at.source)
    (at.source / "a.txt").write_text("a")
    files = service(at, copy=((alias, at.target),))
    await files.copy(f"{alias}/a.txt", f"{at.target}/via-alias", False, False)
    await files.copy(f"{at.source}/a.txt", f"{at.target}/via-real", False, False)
    assert tree(at.target) == {"via-alias": "a", "via-real": "a"}
    # The QVD folder's own spelling is what a relative directory is joined to.
    files = service(at, qvd=alias)
    await refused(
        files.create_qvd_dir("../links/from/q"), FileAccessDenied, "Directory must be within the QVD folder"
    )
    assert await files.create_qvd_dir("../from/q") == "q"
    assert tree(at.source) == {"a.txt": "a", "q": "/"}


async def test_the_root_folder_can_be_approved(at: Folders) -> None:
    (at.source / "a.txt").write_text("a")
    await service(at, copy=((Path("/"), Path("/")),)).copy(
        f"{at.source}/a.txt", f"{at.target}/a.txt", False, False
    )
    assert tree(at.target) == {"a.txt": "a"}


async def test_only_slashes_are_trimmed_from_an_approved_folder(at: Folders) -> None:
    inbox, outbox = at.base / "inboX/", at.base / "outboX"
    inbox.mkdir()
    outbox.mkdir()
    (inbox / "a.txt").write_text("a")
    await service(at, copy=((inbox, outbox),)).copy(f"{inbox}/a.txt", f"{outbox}/a.txt", False, False)
    assert tree(outbox) == {"a.txt": "a"}


async def test_the_next_approved_pair_is_tried(at: Folders) -> None:
    (at.outside / "o.txt").write_text("o")
    (at.source / "escape").symlink_to(at.outside)
    (at.source / "a.txt").write_text("a")
    second = at.base / "second"
    second.mkdir()
    pairs = ((at.made, at.made), (at.source, at.target), (at.base, at.base))
    files = service(at, copy=pairs, move=pairs)
    # Under from/ the link leads out; under the temporary folder as a whole it does not.
    await files.copy(f"{at.source}/escape/o.txt", f"{at.target}/copied.txt", False, False)
    await files.move(f"{at.source}/escape/o.txt", f"{at.target}/moved.txt", False)
    await files.copy(f"{at.source}/a.txt", f"{second}/a.txt", False, False)
    assert tree(at.target) == {"copied.txt": "o", "moved.txt": "o"}
    assert tree(second) == {"a.txt": "a"}
    assert tree(at.outside) == {"secret.txt": "secret"}


# -- move ------------------------------------------------------------------------------------------------


async def test_move_a_file(at: Folders) -> None:
    source = at.source / "a.txt"
    source.write_text("a")
    files = service(at)
    answer = await files.move(f"{at.source}/./a.txt", f"{at.target}/new/a.txt", False)
    assert answer == (str(source), f"{at.target}/new/a.txt")
    assert tree(at.target) == {"new": "/", "new/a.txt": "a"}
    assert tree(at.source) == {}


async def test_move_refuses_to_overwrite_unless_told(at: Folders) -> None:
    (at.source / "a.txt").write_text("new")
    (at.target / "a.txt").write_text("old")
    files = service(at)
    await refused(
        files.move(f"{at.source}/a.txt", f"{at.target}/a.txt", False),
        FileRequestError,
        "toFile exists and overwrite is false",
    )
    assert tree(at.target) == {"a.txt": "old"}
    await files.move(f"{at.source}/a.txt", f"{at.target}/a.txt", True)
    assert tree(at.target) == {"a.txt": "new"}
    assert tree(at.source) == {}


async def test_move_a_folder(at: Folders) -> None:
    (at.source / "tree" / "sub").mkdir(parents=True)
    (at.source / "tree" / "sub" / "a.txt").write_text("a")
    await service(at).move(f"{at.source}/tree", f"{at.target}/tree", False)
    assert tree(at.target) == {"tree": "/", "tree/sub": "/", "tree/sub/a.txt": "a"}
    assert tree(at.source) == {}


async def test_move_onto_another_link_to_the_same_file(at: Folders) -> None:
    (at.source / "a.txt").write_text("a")
    os.link(at.source / "a.txt", at.target / "a.txt")
    await service(at).move(f"{at.source}/a.txt", f"{at.target}/a.txt", True)
    assert tree(at.source) == {}
    assert tree(at.target) == {"a.txt": "a"}


async def test_a_move_the_file_system_refuses_leaves_the_source(at: Folders) -> None:
    (at.source / "a.txt").write_text("a")
    (at.source / "tree").mkdir()
    (at.source / "tree" / "t.txt").write_text("t")
    (at.target / "folder" / "inner").mkdir(parents=True)
    (at.target / "file").write_text("file")
    (at.target / "empty").mkdir()
    os.mkfifo(at.source / "pipe")
    files = service(at)
    for source, target, kind, message in (
        ("a.txt", "folder", FileRequestError, "toFile is a folder where a file is expected"),
        ("tree", "folder", FileConflict, "toFile is a folder that is not empty"),
        ("tree", "file", FileRequestError, "toFile has a file where a folder is expected"),
        ("a.txt", "file/x", FileRequestError, "toFile has a file where a folder is expected"),
        ("pipe", "pipe", FileRequestError, "fromFile is not a regular file or a folder"),
        ("missing", "x", FileRequestError, "fromFile does not exist"),
        ("a.txt", "n" * 300, FileRequestError, "toFile has a name longer than the file system allows"),
    ):
        await refused(files.move(f"{at.source}/{source}", f"{at.target}/{target}", True), kind, message)
    assert tree(at.source) == {"a.txt": "a", "pipe": "|", "tree": "/", "tree/t.txt": "t"}
    assert tree(at.target) == {"empty": "/", "file": "file", "folder": "/", "folder/inner": "/"}
    # An empty folder is replaced by a folder, as a rename does.
    await files.move(f"{at.source}/tree", f"{at.target}/empty", True)
    assert tree(at.target)["empty/t.txt"] == "t"


async def test_a_folder_is_not_moved_into_itself(at: Folders) -> None:
    (at.source / "tree").mkdir()
    files = service(at, move=((at.source, at.source),))
    await refused(
        files.move(f"{at.source}/tree", f"{at.source}/tree/sub/tree", False),
        FileRequestError,
        "fromFile cannot be used here (a folder cannot be moved into itself)",
    )
    assert tree(at.source) == {"tree": "/", "tree/sub": "/"}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than the temporary folder."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system here")
    folder = shm / f"butler-files-service-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


async def test_move_across_file_systems(at: Folders, elsewhere: Path) -> None:
    (at.source / "a.txt").write_text("a")
    os.utime(at.source / "a.txt", (OLD, OLD))
    (at.source / "tree" / "sub").mkdir(parents=True)
    (at.source / "tree" / "sub" / "b.txt").write_text("b")
    (elsewhere / "tree" / "old").mkdir(parents=True)
    (elsewhere / "folder").mkdir()
    files = service(at, move=((at.source, elsewhere),))
    await files.move(f"{at.source}/a.txt", f"{elsewhere}/a.txt", False)
    assert (elsewhere / "a.txt").stat().st_mtime == OLD
    await files.move(f"{at.source}/tree", f"{elsewhere}/tree", True)
    assert tree(elsewhere) == {
        "a.txt": "a",
        "folder": "/",
        "tree": "/",
        "tree/sub": "/",
        "tree/sub/b.txt": "b",
    }
    assert tree(at.source) == {}
    (at.source / "c.txt").write_text("c")
    await refused(
        files.move(f"{at.source}/c.txt", f"{elsewhere}/folder", True),
        FileRequestError,
        "toFile is a folder where a file is expected",
    )
    assert tree(at.source) == {"c.txt": "c"}
    assert tree(elsewhere)["folder"] == "/"


# -- delete ----------------------------------------------------------------------------------------------


async def test_delete_files_folders_and_links(at: Folders) -> None:
    (at.trash / "a.txt").write_text("a")
    (at.trash / "tree" / "sub").mkdir(parents=True)
    (at.trash / "tree" / "sub" / "b.txt").write_text("b")
    (at.trash / "link").symlink_to(at.outside / "secret.txt")
    (at.trash / "folder-link").symlink_to(at.outside)
    (at.trash / "keep.txt").write_text("keep")
    files = service(at)
    for name in ("a.txt", "tree", "link", "folder-link"):
        await files.delete(f"{at.trash}/{name}")
    assert tree(at.trash) == {"keep.txt": "keep"}
    assert tree(at.outside) == {"secret.txt": "secret"}


async def test_delete_refusals(at: Folders) -> None:
    (at.trash / "a.txt").write_text("a")
    (at.trash / "escape").symlink_to(at.outside)
    files = service(at)
    for path in (f"{at.trash}/missing", f"{at.trash}/missing/deeper/x"):
        await refused(files.delete(path), FileRequestError, "Delete failed, file does not exist")
    await refused(
        files.delete(f"{at.trash}/a.txt/x"),
        FileRequestError,
        "deleteFile has a file where a folder is expected",
    )
    for path in (
        str(at.trash),
        f"{at.trash}/..",
        f"{at.outside}/secret.txt",
        f"{at.trash}/escape/secret.txt",
    ):
        await refused(files.delete(path), FileAccessDenied, "No approved directory for file delete")
    assert tree(at.trash) == {"a.txt": "a", "escape": f"-> {at.outside}"}
    assert tree(at.outside) == {"secret.txt": "secret"}


async def test_delete_tries_the_next_approved_folder(at: Folders) -> None:
    (at.trash / "escape").symlink_to(at.outside)
    (at.outside / "o.txt").write_text("o")
    (at.made / "m.txt").write_text("m")
    files = service(at, delete=(at.trash, at.made, at.base))
    await files.delete(f"{at.made}/m.txt")
    await files.delete(f"{at.trash}/escape/o.txt")
    assert tree(at.made) == {}
    assert tree(at.outside) == {"secret.txt": "secret"}


@pytest.mark.parametrize(("depth", "deleted"), [(MAX_DEPTH - 1, True), (MAX_DEPTH, False)])
async def test_delete_depth(at: Folders, depth: int, deleted: bool) -> None:
    deepest = chain(at.trash / "top", depth)
    call = service(at).delete(f"{at.trash}/top")
    if deleted:
        await call
        assert tree(at.trash) == {}
    else:
        await refused(call, FileRequestError, "deleteFile goes deeper than 128 folders")
        assert deepest.is_dir()


@pytest.mark.parametrize(("depth", "copied"), [(MAX_DEPTH - 1, True), (MAX_DEPTH, False)])
async def test_copy_depth(at: Folders, depth: int, copied: bool) -> None:
    chain(at.source / "top", depth)
    call = service(at).copy(f"{at.source}/top", f"{at.target}/top", False, False)
    if copied:
        await call
        assert (at.target / "top").joinpath(*["d"] * depth).is_dir()
    else:
        await refused(call, FileRequestError, "fromFile goes deeper than 128 folders")
        assert tree(at.target) == {}


# -- folders ---------------------------------------------------------------------------------------------


async def test_create_folders_in_an_approved_folder(at: Folders) -> None:
    files = service(at)
    await files.create_dir(f"{at.made}/a/b")
    await files.create_dir(f"{at.made}/a/b")
    await files.create_dir(f"{at.made}/XXXX/XXXX")
    await files.create_dir(str(at.made))
    (at.made / "inner").symlink_to("a")
    await files.create_dir(f"{at.made}/inner/c")
    assert tree(at.made) == {
        "XXXX": "/",
        "XXXX/XXXX": "/",
        "a": "/",
        "a/b": "/",
        "a/c": "/",
        "inner": "-> a",
    }


async def test_create_folder_refusals(at: Folders) -> None:
    (at.made / "file").write_text("file")
    (at.made / "escape").symlink_to(at.outside)
    files = service(at)
    await refused(
        files.create_dir(f"{at.made}/file/x"),
        FileRequestError,
        "directory has a file where a folder is expected",
    )
    await refused(
        files.create_dir(f"{at.made}/" + "n" * 300),
        FileRequestError,
        "directory has a name longer than the file system allows",
    )
    message = "Directory must be within an approved folder (createDirApprovedDirectories)"
    for path in (f"{at.outside}/x", f"{at.made}/escape/x", f"{at.made}x"):
        await refused(files.create_dir(path), FileAccessDenied, message)
    assert tree(at.outside) == {"secret.txt": "secret"}
    assert tree(at.made) == {"escape": f"-> {at.outside}", "file": "file"}


async def test_create_folder_tries_the_next_approved_folder(at: Folders) -> None:
    (at.made / "escape").symlink_to(at.outside)
    files = service(at, create_dir=(at.target, at.made, at.base))
    await files.create_dir(f"{at.made}/new")
    await files.create_dir(f"{at.made}/escape/new")
    assert tree(at.made) == {"escape": f"-> {at.outside}", "new": "/"}
    assert (at.outside / "new").is_dir()


@pytest.mark.parametrize(("depth", "made"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False)])
async def test_create_folder_depth(at: Folders, depth: int, made: bool) -> None:
    files = service(at)
    call = files.create_dir(f"{at.made}/" + "/".join(["d"] * depth))
    if made:
        await call
        assert at.made.joinpath(*["d"] * depth).is_dir()
    else:
        await refused(call, FileRequestError, "directory goes deeper than 128 folders")
        assert tree(at.made) == {}


async def test_create_folders_anywhere_when_unrestricted(
    at: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(at.made)
    files = service(at, create_dir=None)
    await files.create_dir(f"{at.outside}/a/b")
    await files.create_dir(f"{at.outside}/a/b")
    await files.create_dir("relative/c")
    await files.create_dir("")
    await refused(files.create_dir(f"{at.outside}/x\x00y"), FileRequestError, "directory contains a NUL byte")
    assert tree(at.outside) == {"a": "/", "a/b": "/", "secret.txt": "secret"}
    assert tree(at.made) == {"relative": "/", "relative/c": "/"}


async def test_create_qvd_folders(at: Folders) -> None:
    files = service(at)
    assert await files.create_qvd_dir("a/b") == "a/b"
    assert await files.create_qvd_dir("/abs\\path/") == "abs/path"
    assert await files.create_qvd_dir(" lead") == " lead"
    assert await files.create_qvd_dir("XX1") == "XX1"
    assert await files.create_qvd_dir("") == ""
    assert await files.create_qvd_dir("x/../y") == "y"
    (at.qvd / "inner").symlink_to("a")
    assert await files.create_qvd_dir("inner/c") == "inner/c"
    assert tree(at.qvd) == {
        " lead": "/",
        "XX1": "/",
        "a": "/",
        "a/b": "/",
        "a/c": "/",
        "abs": "/",
        "abs/path": "/",
        "inner": "-> a",
        "y": "/",
    }


async def test_create_qvd_folder_refusals(at: Folders) -> None:
    files = service(at)
    (at.qvd / "escape").symlink_to(at.outside)
    (at.qvd / "file").write_text("file")
    message = "Directory must be within the QVD folder"
    for directory in (
        "..",
        "../x",
        "a/../../x",
        "escape/x",
        "a\x00b",
        "%2e%2e/x",
        "a%2Fb",
        "a" * (MAX_PATH + 1),
    ):
        await refused(files.create_qvd_dir(directory), FileAccessDenied, message)
    await refused(
        files.create_qvd_dir("d/" * (MAX_PATH // 2)),
        FileRequestError,
        "directory goes deeper than 128 folders",
    )
    await refused(
        files.create_qvd_dir("file/x"), FileRequestError, "directory has a file where a folder is expected"
    )
    assert tree(at.qvd) == {"escape": f"-> {at.outside}", "file": "file"}
    assert tree(at.outside) == {"secret.txt": "secret"}


async def test_create_qvd_folder_without_a_qvd_folder(at: Folders) -> None:
    files = FileService(FileSettings())
    await refused(
        files.create_qvd_dir("a"),
        FileRequestError,
        "No QVD folder is configured (Butler.configDirectories.qvdPath)",
    )
