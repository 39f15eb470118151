"""Copying, moving and deleting files and creating folders for load scripts, inside approved folders only.

Upstream Butler decides by comparing path strings, which symlinks and odd spellings get around. Here the
object operated on is checked, not its name: paths that only make sense as tricks (NUL bytes,
percent-encoded dots and slashes, Windows drive forms on other systems, relative paths, over-long paths)
are refused before anything is looked at; the rest must name a place under an approved folder, which is
opened once per request, and every name below it is opened relative to the handle of the folder above it
without following a link. A link met on the way is read and followed only when where it leads stays
inside the same approved folder. Files are read through the handle that was checked, temporary files are
created and renamed inside the target folder's handle, and deletes go through the folder's handle, so
swapping an entry for a link between the check and the use leads nowhere. On Windows, which has no
``dir_fd``, every folder on the way is held open without delete sharing (so it cannot be renamed or
replaced while Butler works in it) and the final path of every opened handle is checked to lie inside the
approved folder before it is read, written or deleted.

File work runs in threads, never on the event loop. A copy is written to a temporary name in the target
folder and renamed into place, so no reader sees half a file; a move within one file system is a rename,
and across file systems a copy (synced and size-checked) followed by deleting the source, so the source
is never lost when a step fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import re
import stat
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from butler.config.settings import FileSettings
from butler.errors import AccessDenied, BadRequest, Conflict

MAX_PATH = 4096
#: Folders nested deeper than this are refused (400): each level of a path or of a copied or deleted tree
#: holds a folder handle and a stack frame, and no load script's folders come near it.
MAX_DEPTH = 128
_UNC = re.compile(r"^[\\/]{2,}[^\\/]+[\\/]+[^\\/]+")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
WINDOWS = sys.platform == "win32"
#: Links followed while resolving one path (Linux's own limit).
_MAX_LINKS = 40
#: What opening a link as a folder without following it answers (ELOOP on Linux and Windows here,
#: EMLINK on FreeBSD, ENOTDIR when the name is a file).
_NOT_A_FOLDER = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})


class FileRequestError(BadRequest, ValueError):
    """The request cannot be carried out as asked (400); the message says why."""


class FileAccessDenied(AccessDenied):
    """The path is not inside an approved folder, or is a form that is never approved (403)."""


class FileConflict(Conflict):
    """The file system changed under the request (an entry vanished or changed kind mid-way): 409."""


class _Outside(Exception):
    """A step of a path leads out of the approved folder it was resolved under."""


class _TooDeep(Exception):
    """A path or a folder tree goes deeper than ``MAX_DEPTH`` folders."""


#: The one place where the file system's refusals become answers to the caller: what the error says about
#: the caller's path. Anything else (a full disk, an I/O error) is the server's problem and stays an OSError.
_CALLER_ERRNOS: dict[int, tuple[type[Exception], str]] = {
    errno.ENOENT: (FileRequestError, "does not exist"),
    errno.ENAMETOOLONG: (FileRequestError, "has a name longer than the file system allows"),
    errno.ENOTDIR: (FileRequestError, "has a file where a folder is expected"),
    errno.EISDIR: (FileRequestError, "is a folder where a file is expected"),
    errno.EINVAL: (FileRequestError, "cannot be used here (a folder cannot be moved into itself)"),
    errno.ELOOP: (FileConflict, "changed while Butler was working on it"),
    errno.EEXIST: (FileConflict, "changed while Butler was working on it"),
    errno.ENOTEMPTY: (FileConflict, "is a folder that is not empty"),
    errno.EBUSY: (FileConflict, "is in use"),
    errno.ETXTBSY: (FileConflict, "is in use"),
    errno.EACCES: (FileAccessDenied, "cannot be used: permission denied"),
    errno.EPERM: (FileAccessDenied, "cannot be used: operation not permitted"),
}


@contextmanager
def _blame(subject: str) -> Iterator[None]:
    """Turn an OS error about the caller's path ``subject`` into the answer it deserves."""
    try:
        yield
    except _TooDeep:
        raise FileRequestError(f"{subject} goes deeper than {MAX_DEPTH} folders") from None
    except OSError as exc:
        known = _CALLER_ERRNOS.get(exc.errno or 0)
        if known is None:
            raise
        kind, explanation = known
        raise kind(f"{subject} {explanation}") from None


def normalize(raw: str) -> str:
    """Upstream's spelling of a path: backslashes as slashes, ``.`` and ``..`` resolved lexically."""
    text = raw.replace("\\", "/")
    if not text:
        return "."
    return posixpath.normpath(text) if not text.startswith("//") else "/" + posixpath.normpath(text)


def _absolute(path: str) -> bool:
    if WINDOWS:
        return bool(_DRIVE.match(path) and path[2:3] == "/") or path.startswith("//")
    return posixpath.isabs(path)


def _refuse_nul(raw: str, subject: str) -> None:
    # No file system takes a NUL in a name; Python refuses such a path with a ValueError, not an OSError.
    if "\x00" in raw:
        raise FileRequestError(f"{subject} contains a NUL byte")


def _screen(raw: str, kind: str) -> str:
    """Refuse the path forms that are never approved; return the normalized path."""
    _refuse_nul(raw, kind)
    if len(raw) > MAX_PATH:
        raise FileRequestError(f"{kind} is longer than {MAX_PATH} characters")
    if not WINDOWS and _UNC.match(raw):
        raise FileRequestError(
            f"UNC paths not supported for file {kind} operations when running Butler on non-Windows OS. "
            f"Path: {raw}"
        )
    if not WINDOWS and _DRIVE.match(raw):
        raise FileAccessDenied(f"{raw}: Windows drive paths cannot be approved on this system")
    if _ENCODED.search(raw):
        raise FileAccessDenied(f"{raw}: percent-encoded path characters are not accepted")
    path = normalize(raw)
    if not _absolute(path):
        raise FileAccessDenied(f"{raw}: only absolute paths can be approved")
    return path


def _same_name(a: str, b: str) -> bool:
    return a.casefold() == b.casefold() if WINDOWS else a == b


@dataclass(frozen=True)
class _Root:
    """An approved folder for one request: resolved once (the admin controls its path) and opened below."""

    real: str
    spellings: tuple[str, ...]

    @classmethod
    def of(cls, folder: Path) -> _Root:
        real = os.path.realpath(folder)
        return cls(real, (normalize(str(folder)), normalize(real)))

    def beneath(self, path: str) -> list[str] | None:
        """The names of a normalized path below this folder (``[]`` for the folder itself), or None when the
        path does not start with the folder as configured or as it really is."""
        names = path.split("/")
        for spelling in self.spellings:
            base = spelling.rstrip("/").split("/")
            if len(names) >= len(base) and all(map(_same_name, names, base)):
                return [name for name in names[len(base) :] if name]
        return None


def _is_link(info: os.stat_result) -> bool:
    # Windows junctions are reparse points that S_ISLNK does not report.
    return stat.S_ISLNK(info.st_mode) or bool(getattr(info, "st_file_attributes", 0) & 0x400)


def _is_folder(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) and not _is_link(info)


if sys.platform == "win32":
    import ctypes
    import msvcrt
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.CreateFileW.argtypes = [
        wintypes.LPCWSTR,
        wintypes.DWORD,
        wintypes.DWORD,
        wintypes.LPVOID,
        wintypes.DWORD,
        wintypes.DWORD,
        wintypes.HANDLE,
    ]
    _kernel32.CreateFileW.restype = wintypes.HANDLE
    _kernel32.GetFinalPathNameByHandleW.argtypes = [
        wintypes.HANDLE,
        wintypes.LPWSTR,
        wintypes.DWORD,
        wintypes.DWORD,
    ]
    _kernel32.GetFinalPathNameByHandleW.restype = wintypes.DWORD
    _kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    _kernel32.CloseHandle.restype = wintypes.BOOL
    _FILE_READ_ATTRIBUTES = 0x80
    _SHARE_READ_WRITE = 0x1 | 0x2  # no FILE_SHARE_DELETE: nobody renames or replaces it while it is held
    _OPEN_EXISTING = 3
    _OPEN_FOLDER_ITSELF = 0x02000000 | 0x00200000  # FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT
    _INVALID_HANDLE = ctypes.c_void_p(-1).value

    def _hold(path: str) -> int:
        """A handle on the entry ``path`` itself (a link is not followed) that pins its name."""
        handle = _kernel32.CreateFileW(
            path, _FILE_READ_ATTRIBUTES, _SHARE_READ_WRITE, None, _OPEN_EXISTING, _OPEN_FOLDER_ITSELF, None
        )
        if handle is None or handle == _INVALID_HANDLE:
            raise ctypes.WinError(ctypes.get_last_error())
        return int(handle)

    def _final_path(handle: int) -> str:
        size = 1024
        while True:
            buffer = ctypes.create_unicode_buffer(size)
            length = _kernel32.GetFinalPathNameByHandleW(handle, buffer, size, 0)
            if length == 0:
                raise ctypes.WinError(ctypes.get_last_error())
            if length < size:
                return _plain(buffer.value)
            size = length + 1

    class _Folder:
        """An open folder on Windows: held without delete sharing, its final path checked to lie inside the
        approved folder; its entries are named by path below it, each opened handle checked again."""

        def __init__(self, path: str, handle: int, root: _Root) -> None:
            self.path, self.handle, self.root = path, handle, root

        @classmethod
        def open_root(cls, real: str) -> _Folder:
            return cls(real, _hold(real), _Root(real, (normalize(real),)))

        def _at(self, name: str) -> str:
            return os.path.join(self.path, name)

        def _check(self, handle: int) -> None:
            if self.root.beneath(normalize(_final_path(handle))) is None:
                raise _Outside(self._at(""))

        def child(self, name: str) -> _Folder:
            path = self._at(name)
            handle = _hold(path)
            try:
                info = os.lstat(path)  # the held handle pins the name, so this describes the opened entry
                if _is_link(info):
                    raise OSError(errno.ELOOP, "is a link", path)
                if not stat.S_ISDIR(info.st_mode):
                    raise OSError(errno.ENOTDIR, "is not a folder", path)
                self._check(handle)
            except BaseException:
                _kernel32.CloseHandle(handle)
                raise
            return _Folder(path, handle, self.root)

        def readlink(self, name: str) -> str | None:
            path = self._at(name)
            return os.readlink(path) if _is_link(os.lstat(path)) else None

        def mkdir(self, name: str) -> None:
            os.mkdir(self._at(name))

        def lstat(self, name: str) -> os.stat_result:
            return os.lstat(self._at(name))

        def names(self) -> list[str]:
            return os.listdir(self.path)

        def _checked(self, descriptor: int) -> int:
            try:
                self._check(msvcrt.get_osfhandle(descriptor))
            except BaseException:
                os.close(descriptor)
                raise
            return descriptor

        def open_file(self, name: str) -> int:
            # Opened files are not shared for delete either; a link swapped in is caught by the check.
            return self._checked(os.open(self._at(name), os.O_RDONLY | os.O_BINARY | os.O_NOINHERIT))

        def create_file(self, name: str) -> int:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_BINARY | os.O_NOINHERIT
            return self._checked(os.open(self._at(name), flags, 0o666))

        def copy_stat(self, descriptor: int, name: str, source: os.stat_result) -> None:
            os.chmod(self._at(name), stat.S_IMODE(source.st_mode))
            os.utime(self._at(name), ns=(source.st_atime_ns, source.st_mtime_ns))

        def rename(self, name: str, folder: _Folder, new_name: str) -> None:
            # MoveFileEx replaces a link at the target rather than writing through it.
            os.replace(self._at(name), folder._at(new_name))

        def unlink(self, name: str) -> None:
            # DeleteFile and RemoveDirectory remove a link or junction itself, never what it leads to.
            os.unlink(self._at(name))

        def rmdir(self, name: str) -> None:
            os.rmdir(self._at(name))

        def close(self) -> None:
            _kernel32.CloseHandle(self.handle)

else:
    _FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    class _Folder:
        """An open folder: its entries are opened relative to this handle, never by a path that can change,
        and never through a link."""

        def __init__(self, descriptor: int) -> None:
            self.fd = descriptor

        @classmethod
        def open_root(cls, real: str) -> _Folder:
            return cls(os.open(real, _FOLDER_FLAGS))

        def child(self, name: str) -> _Folder:
            return _Folder(os.open(name, _FOLDER_FLAGS, dir_fd=self.fd))

        def readlink(self, name: str) -> str | None:
            try:
                return os.readlink(name, dir_fd=self.fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not a link
                    return None
                raise

        def mkdir(self, name: str) -> None:
            os.mkdir(name, dir_fd=self.fd)

        def lstat(self, name: str) -> os.stat_result:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

        def names(self) -> list[str]:
            return os.listdir(self.fd)

        def open_file(self, name: str) -> int:
            # O_NONBLOCK: a FIFO swapped in must not hold the thread waiting for a writer.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            descriptor = os.open(name, flags, dir_fd=self.fd)
            os.set_blocking(descriptor, True)
            return descriptor

        def create_file(self, name: str) -> int:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(name, flags, 0o666, dir_fd=self.fd)

        def copy_stat(self, descriptor: int, name: str, source: os.stat_result) -> None:
            os.chmod(descriptor, stat.S_IMODE(source.st_mode))
            os.utime(descriptor, ns=(source.st_atime_ns, source.st_mtime_ns))

        def rename(self, name: str, folder: _Folder, new_name: str) -> None:
            os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=folder.fd)

        def unlink(self, name: str) -> None:
            os.unlink(name, dir_fd=self.fd)

        def rmdir(self, name: str) -> None:
            os.rmdir(name, dir_fd=self.fd)

        def close(self) -> None:
            os.close(self.fd)


def _plain(path: str) -> str:
    """A Windows path without the ``\\\\?\\`` (or ``\\??\\``) prefix that final paths and junctions carry."""
    for prefix in ("\\\\?\\UNC\\", "\\??\\UNC\\"):
        if path.startswith(prefix):
            return "\\\\" + path[len(prefix) :]
    for prefix in ("\\\\?\\", "\\??\\"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


class _Walk:
    """Names resolved below one approved folder, a folder handle at a time. Links are read and followed
    only while they stay below the folder; ``..`` can climb back to it but not above."""

    def __init__(self, root: _Root, subject: str) -> None:
        self.root, self.subject = root, subject
        self.stack = [_Folder.open_root(root.real)]
        self.names: list[str] = []
        self.turns = 0

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        for folder in self.stack:
            folder.close()
        self.stack.clear()

    @property
    def here(self) -> _Folder:
        return self.stack[-1]

    def _up(self) -> None:
        if len(self.stack) == 1:
            raise _Outside(self.subject)
        self.stack.pop().close()
        self.names.pop()

    def _turn(self, why: Exception) -> None:
        self.turns += 1
        if self.turns > _MAX_LINKS:
            raise why

    def _link(self, name: str) -> list[str] | None:
        """The names to walk instead of the link ``name`` here (from the root if it is absolute), or None
        when ``name`` is not a link."""
        target = self.here.readlink(name)
        if target is None:
            return None
        self._turn(FileRequestError(f"{self.subject} has too many levels of symbolic links"))
        text = normalize(_plain(target)) if WINDOWS else posixpath.normpath(target)
        if not (text.startswith("/") or _absolute(text)):  # rooted without a drive is not relative either
            return [part for part in text.split("/") if part not in ("", ".")]
        names = self.root.beneath(text)
        if names is None:
            raise _Outside(self.subject)
        while len(self.stack) > 1:
            self._up()
        return names

    def down(self, names: list[str], create: bool = False) -> None:
        """Go into the folder ``names`` leads to; missing folders are made when ``create``."""
        if len(self.stack) + len(names) > MAX_DEPTH + 1:  # refused before anything is made
            raise _TooDeep
        pending = names[::-1]
        made = ""  # the name just made here, tried once more
        while pending:
            name = pending.pop()
            retry, made = name == made, ""
            if name == "..":
                self._up()
                continue
            if name in ("", "."):
                continue
            if len(self.stack) > MAX_DEPTH:
                raise _TooDeep
            try:
                folder = self.here.child(name)
            except FileNotFoundError:
                if not create:
                    raise
                if retry:  # made a moment ago and gone again: someone else is at work here
                    raise FileConflict(f"{self.subject} changed while Butler was working on it") from None
                with suppress(FileExistsError):  # made meanwhile: open whatever is there now
                    self.here.mkdir(name)
                made = name
                pending.append(name)
                continue
            except OSError as exc:
                if exc.errno not in _NOT_A_FOLDER:
                    raise
                instead = self._link(name)
                if instead is None:
                    raise
                pending.extend(reversed(instead))
                continue
            self.stack.append(folder)
            self.names.append(name)

    def entry(self, names: list[str], follow: bool, create: bool = False) -> str:
        """Go into the folder holding the last of ``names`` (made when missing and ``create``) and return
        that name; when ``follow``, a link there is replaced by what it leads to. The approved folder itself
        is no entry of it."""
        *folders, name = names or [".."]
        self.down(folders, create)
        while follow and name not in (".", ".."):
            instead = self._link(name)
            if instead is None:
                break
            *folders, name = instead or ["."]
            self.down(folders, create)
        if name in (".", ".."):  # a link to a folder above: the entry is that folder, named in its parent
            self.down([name])
            name = self.names[-1] if self.names else ""
            self._up()
        return name


def _temporary(name: str) -> str:
    return f".{name[:100]}.butler-{uuid.uuid4().hex[:8]}.part"


def _pour(source: int, target: int) -> int:
    """Copy the open file ``source`` into ``target`` from their starts; returns the bytes copied."""
    if sys.platform == "linux":
        offset = 0
        while count := os.sendfile(target, source, offset, 1 << 30):
            offset += count
        return offset
    copied = 0
    with open(source, "rb", closefd=False) as reader, open(target, "wb", closefd=False) as writer:
        while block := reader.read(1 << 20):
            writer.write(block)
            copied += len(block)
    return copied


def _write_file(source: int, folder: _Folder, name: str, preserve: bool) -> None:
    """Write the open regular file ``source`` as the new entry ``name`` of ``folder``, synced, checked."""
    info = os.fstat(source)
    target = folder.create_file(name)
    try:
        if _pour(source, target) != info.st_size:
            raise FileConflict("fromFile changed while Butler was copying it")
        if preserve:
            folder.copy_stat(target, name, info)
        os.fsync(target)
    finally:
        os.close(target)


def _open_source(folder: _Folder, name: str) -> int | _Folder:
    """The regular file (as a descriptor) or folder ``name`` of ``folder``, opened without following links."""
    info = folder.lstat(name)
    if _is_link(info):  # the name was resolved to no link a moment ago
        raise FileConflict("fromFile changed while Butler was working on it")
    if _is_folder(info):
        return folder.child(name)
    if stat.S_ISREG(info.st_mode):
        descriptor = folder.open_file(name)
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            return descriptor
        os.close(descriptor)
    raise FileRequestError("fromFile is not a regular file or a folder")


def _close(source: int | _Folder) -> None:
    if isinstance(source, int):
        os.close(source)
    else:
        source.close()


def _write(
    source: int | _Folder,
    folder: _Folder,
    name: str,
    preserve: bool,
    made: frozenset[tuple[int, int]] = frozenset(),
) -> None:
    """Write ``source`` (a file or a folder) as the new entry ``name`` of ``folder``. ``made`` are the
    folders this copy has made so far, not copied again when the copy lies inside its source."""
    if isinstance(source, int):
        _write_file(source, folder, name, preserve)
        return
    folder.mkdir(name)
    copy = folder.child(name)
    made |= {_identity(_stat(copy))}
    try:
        # What goes wrong with the source's entries is told about fromFile, not about the target.
        with _blame("fromFile"):
            entries = source.names()
        for entry in entries:
            with _blame("fromFile"):
                info = source.lstat(entry)
                if _identity(info) in made:
                    continue
                # A link inside a copied folder is not followed: where it leads was never approved.
                if _is_link(info):
                    raise FileRequestError(
                        f"fromFile holds a symbolic link ({entry}); only files and folders are copied"
                    )
                if _is_folder(info) and len(made) >= MAX_DEPTH:  # one folder made a level
                    raise _TooDeep
                inner = _open_source(source, entry)
            try:
                _write(inner, copy, entry, preserve, made)
            finally:
                _close(inner)
    finally:
        copy.close()


def _remove(folder: _Folder, name: str, depth: int = 0) -> None:
    """Delete the entry ``name`` of ``folder``; a folder with everything in it, walked by handle."""
    if not _is_folder(folder.lstat(name)):
        folder.unlink(name)  # a link goes, not what it leads to
        return
    if depth >= MAX_DEPTH:
        raise _TooDeep
    inner = folder.child(name)
    try:
        for entry in inner.names():
            _remove(inner, entry, depth + 1)
    finally:
        inner.close()
    folder.rmdir(name)


def _remove_if_there(folder: _Folder, name: str) -> None:
    with suppress(FileNotFoundError):
        _remove(folder, name)


def _place(source: int | _Folder, folder: _Folder, name: str, preserve: bool) -> None:
    """Write ``source`` under a temporary name in ``folder`` and rename it to ``name`` (a folder that is
    there is replaced by a folder, never by a file)."""
    if isinstance(source, int) and _holds_folder(folder, name):
        # As a rename would refuse it, before the copy: most likely the caller meant "into this folder".
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    temporary = _temporary(name)
    try:
        _write(source, folder, temporary, preserve)
        # A folder made there meanwhile stays when the source is a file: the rename refuses it.
        if not isinstance(source, int) and _holds_folder(folder, name):
            _remove(folder, name)
        folder.rename(temporary, folder, name)
    finally:
        _remove_if_there(folder, temporary)


def _holds_folder(folder: _Folder, name: str) -> bool:
    try:
        return _is_folder(folder.lstat(name))
    except FileNotFoundError:
        return False


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


@dataclass
class FileService:
    """Copies, moves, deletes and folders inside the approved folders, for the REST API. Every operation
    runs in a thread and works on handles, as the module's docstring says."""

    settings: FileSettings

    # -- operations: each runs in a thread, checks included (they touch the disk too) ---------------------

    async def copy(
        self, from_file: str, to_file: str, overwrite: bool, preserve_timestamp: bool
    ) -> tuple[str, str]:
        return await asyncio.to_thread(self._copy, from_file, to_file, overwrite, preserve_timestamp)

    async def move(self, from_file: str, to_file: str, overwrite: bool) -> tuple[str, str]:
        return await asyncio.to_thread(self._move, from_file, to_file, overwrite)

    async def delete(self, delete_file: str) -> None:
        await asyncio.to_thread(self._delete, delete_file)

    async def create_dir(self, directory: str) -> None:
        await asyncio.to_thread(self._create_dir, directory)

    async def create_qvd_dir(self, directory: str) -> str:
        """Create a folder under ``qvdPath``; returns it relative to ``qvdPath``."""
        return await asyncio.to_thread(self._create_qvd_dir, directory)

    # -- approval: each object is checked as it is reached; a path leading out of its folder is refused ----

    @staticmethod
    def _pairs(
        source: str, target: str, pairs: tuple[tuple[Path, Path], ...]
    ) -> Iterator[tuple[_Root, list[str], _Root, list[str]]]:
        """The approved pairs the two paths may fall under, with the names below each folder. Both must be
        below their folder (a folder itself is never copied, moved or replaced)."""
        for from_dir, to_dir in pairs:
            from_root, to_root = _Root.of(from_dir), _Root.of(to_dir)
            source_names, target_names = from_root.beneath(source), to_root.beneath(target)
            if source_names and target_names:
                yield from_root, source_names, to_root, target_names

    def _copy(
        self, from_file: str, to_file: str, overwrite: bool, preserve_timestamp: bool
    ) -> tuple[str, str]:
        source, target = _screen(from_file, "copy"), _screen(to_file, "copy")
        for from_root, source_names, to_root, target_names in self._pairs(source, target, self.settings.copy):
            try:
                with ExitStack() as cleanup:
                    with _blame("fromFile"):
                        source_walk = cleanup.enter_context(_Walk(from_root, "fromFile"))
                        name = source_walk.entry(source_names, follow=True)
                        opened = _open_source(source_walk.here, name)
                    cleanup.callback(_close, opened)
                    with _blame("toFile"):
                        target_walk = cleanup.enter_context(_Walk(to_root, "toFile"))
                        new_name = target_walk.entry(target_names, follow=False, create=True)
                        if overwrite or not _exists(target_walk.here, new_name):
                            # upstream: an existing target without overwrite is left alone; the call succeeds
                            _place(opened, target_walk.here, new_name, preserve_timestamp)
                return source, target
            except _Outside:
                continue
        raise FileAccessDenied("No approved fromDir/toDir for file copy")

    def _move(self, from_file: str, to_file: str, overwrite: bool) -> tuple[str, str]:
        source, target = _screen(from_file, "move"), _screen(to_file, "move")
        for from_root, source_names, to_root, target_names in self._pairs(source, target, self.settings.move):
            try:
                with ExitStack() as cleanup:
                    with _blame("fromFile"):
                        source_walk = cleanup.enter_context(_Walk(from_root, "fromFile"))
                        name = source_walk.entry(source_names, follow=True)
                        before = source_walk.here.lstat(name)
                        if not (_is_folder(before) or stat.S_ISREG(before.st_mode)):
                            raise FileRequestError("fromFile is not a regular file or a folder")
                    with _blame("toFile"):
                        target_walk = cleanup.enter_context(_Walk(to_root, "toFile"))
                        new_name = target_walk.entry(target_names, follow=False, create=True)
                        if not overwrite and _exists(target_walk.here, new_name):
                            raise FileRequestError("toFile exists and overwrite is false")
                    _move(source_walk.here, name, before, target_walk.here, new_name)
                return source, target
            except _Outside:
                continue
        raise FileAccessDenied("No approved fromDir/toDir for file move")

    def _delete(self, delete_file: str) -> None:
        path = _screen(delete_file, "copy")  # upstream's message says "copy" here too
        for folder in self.settings.delete:
            root = _Root.of(folder)
            names = root.beneath(path)
            if not names:  # the approved folder itself cannot be deleted
                continue
            try:
                with _blame("deleteFile"), _Walk(root, "deleteFile") as walk:
                    try:
                        name = walk.entry(names, follow=False)
                        walk.here.lstat(name)
                    except FileNotFoundError:
                        raise FileRequestError("Delete failed, file does not exist") from None
                    _remove(walk.here, name)
                return
            except _Outside:
                continue
        raise FileAccessDenied("No approved directory for file delete")

    def _create_dir(self, directory: str) -> None:
        allowed = self.settings.create_dir
        if allowed is None:
            _refuse_nul(directory, "directory")
            os.makedirs(directory if directory else ".", exist_ok=True)
            return
        path = _screen(directory, "create")
        for folder in allowed:
            root = _Root.of(folder)
            names = root.beneath(path)
            if names is None:
                continue
            try:
                with _blame("directory"), _Walk(root, "directory") as walk:
                    walk.down(names, create=True)
                return
            except _Outside:
                continue
        raise FileAccessDenied("Directory must be within an approved folder (createDirApprovedDirectories)")

    def _create_qvd_dir(self, directory: str) -> str:
        qvd = self.settings.qvd_path
        if qvd is None:
            raise FileRequestError("No QVD folder is configured (Butler.configDirectories.qvdPath)")
        if "\x00" in directory or len(directory) > MAX_PATH or _ENCODED.search(directory):
            raise FileAccessDenied("Directory must be within the QVD folder")
        root = _Root.of(qvd)
        # Upstream joins the two, so an absolute directory lands under the QVD folder as well.
        names = root.beneath(normalize(root.spellings[0] + "/" + directory.replace("\\", "/").lstrip("/")))
        try:
            if names is None:
                raise _Outside(directory)
            with _blame("directory"), _Walk(root, "directory") as walk:
                walk.down(names, create=True)
        except _Outside:
            raise FileAccessDenied("Directory must be within the QVD folder") from None
        return "/".join(names)


def _exists(folder: _Folder, name: str) -> bool:
    try:
        folder.lstat(name)
    except FileNotFoundError:
        return False
    return True


def _move(source: _Folder, name: str, before: os.stat_result, target: _Folder, new_name: str) -> None:
    """Rename ``name`` of ``source`` (last seen as ``before``) to ``new_name`` of ``target``; across file
    systems, copy, check, place, and only then delete the source."""
    # The entry goes to a name of Butler's own first, where it is checked to be what was approved (no
    # link swapped in meanwhile) with no other request renaming over it.
    temporary = _temporary(new_name)
    try:
        with _blame("fromFile"):
            source.rename(name, target, temporary)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _move_across(source, name, before, target, new_name)
        return
    with _blame("toFile"):
        try:
            moved = target.lstat(temporary)
        except FileNotFoundError:
            raise FileConflict("toFile changed while Butler was moving fromFile to it") from None
        if _identity(moved) != _identity(before):
            target.rename(temporary, source, name)
            raise FileConflict("fromFile changed while Butler was moving it")
        try:
            target.rename(temporary, target, new_name)
        except OSError:
            target.rename(temporary, source, name)
            raise
        # Renaming onto another link to the same file leaves both names (POSIX): the temporary one goes.
        with suppress(FileNotFoundError):
            target.unlink(temporary)


def _move_across(source: _Folder, name: str, before: os.stat_result, target: _Folder, new_name: str) -> None:
    with _blame("fromFile"):
        opened = _open_source(source, name)
    try:
        if _identity(_stat(opened)) != _identity(before):
            raise FileConflict("fromFile changed while Butler was moving it")
        with _blame("toFile"):
            _place(opened, target, new_name, preserve=True)
    finally:
        # Closed before the source is deleted: Windows deletes no file or folder that is held open.
        _close(opened)
    # Only now, with the copy in place, does the source go, if it is still what was copied.
    with _blame("fromFile"):
        if _identity(source.lstat(name)) != _identity(before):
            raise FileConflict("fromFile changed while Butler was moving it; the copy is in place")
        _remove(source, name)


def _stat(opened: int | _Folder) -> os.stat_result:
    if isinstance(opened, int):
        return os.fstat(opened)
    if sys.platform == "win32":
        return os.lstat(opened.path)
    return os.fstat(opened.fd)
