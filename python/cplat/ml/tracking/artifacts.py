"""Artifact storage of the tracking service: a local folder or an S3-compatible bucket.

Artifacts are named by relative POSIX paths (``<experiment_id>/<run_id>/artifacts/model.pkl``).
Every path is checked by :func:`split_path` before any backend sees it: no ``..``, ``.`` or
empty components, no absolute paths, no backslashes, NUL or other control characters, no
component longer than 255 bytes, no lone surrogates. A path that fails is refused with
:class:`ArtifactPathError` naming what is wrong; it is never "cleaned up" into another path.

:class:`LocalArtifactStore` keeps artifacts under one root folder (by default
``<data-dir>/artifacts``; folders 0700, files 0600). It walks every path one component at a
time with ``openat``-style calls (``dir_fd`` and ``O_NOFOLLOW``), so a symbolic link placed
inside the root, or a folder swapped for a link while a request runs, is refused instead of
followed out of the root. Uploads go to a hidden temporary file in the target folder and are
renamed into place once complete and flushed to disk, so readers never see half a file and an
upload over the size cap leaves nothing behind.

:class:`S3ArtifactStore` keeps them in an S3-compatible bucket under a key prefix (boto3;
endpoint URL, region and credentials from the settings or boto3's usual environment chain).
Uploads larger than one part stream as a multipart upload, so no upload is held whole in
memory or on disk by the server.

Both are used through the same async methods (``put``, ``open``, ``list_dir``, ``delete``); the
blocking work runs in threads so that the event loop of the service keeps answering.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import os
import secrets
import stat
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cplat.errors import InputError

__all__ = [
    "CHUNK",
    "ArtifactEntry",
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactPathError",
    "ArtifactStore",
    "ArtifactStream",
    "ArtifactTooLargeError",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "split_path",
]

#: Bytes read or written per step when streaming.
CHUNK = 1 << 20
#: Longest path component in bytes (UTF-8), the common file system limit.
MAX_NAME_BYTES = 255
#: Longest artifact path in bytes (UTF-8); S3 keys end at 1024 bytes, prefix included.
MAX_PATH_BYTES = 1024
#: Deepest artifact path (components).
MAX_DEPTH = 64
#: Names of the temporary files of unfinished uploads; no artifact may start with it.
TEMP_PREFIX = ".cplat-upload-"

_DIR_MODE = 0o700
_FILE_MODE = 0o600
# O_NOFOLLOW on every component: a symbolic link is refused (ELOOP), never followed.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ArtifactError(Exception):
    """Base of the artifact storage errors."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class ArtifactPathError(ArtifactError, InputError):
    """A path no artifact can have, or one that runs into a file, a link or a folder.

    ``field`` is ``"path"``, the request field that carries artifact paths.
    """

    def __init__(self, message: str, path: str = "") -> None:
        InputError.__init__(self, message, field="path")
        self.message = message
        self.path = path


class ArtifactNotFoundError(ArtifactError):
    """No artifact (file) at the path."""


class ArtifactTooLargeError(ArtifactError):
    """An upload went past the size cap (nothing was stored)."""

    def __init__(self, message: str, path: str = "", limit: int = 0) -> None:
        super().__init__(message, path)
        self.limit = limit


@dataclass(frozen=True)
class ArtifactEntry:
    """One entry of a folder listing.

    Parameters
    ----------
    name
        The entry's name inside the listed folder (one component).
    is_dir
        Whether it is a folder.
    size
        Size in bytes of a file; None for a folder.
    """

    name: str
    is_dir: bool
    size: int | None


def split_path(path: str, allow_root: bool = False) -> tuple[str, ...]:
    """Check an artifact path and return its components.

    Parameters
    ----------
    path
        A relative POSIX path; one trailing ``/`` is allowed (``a/b/`` is ``a/b``).
    allow_root
        Accept the empty path (the root), for listings.

    Returns
    -------
    tuple of str
        The components, in order (empty for the root).

    Raises
    ------
    ArtifactPathError
        For anything that is not a plain relative path: see the module's documentation.
    """
    if not isinstance(path, str):
        raise ArtifactPathError("an artifact path must be a string", str(path))
    if "\x00" in path:
        raise ArtifactPathError("the artifact path contains a NUL byte", path)
    if "\\" in path:
        raise ArtifactPathError(
            "the artifact path contains a backslash; separate folders with '/'", path
        )
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise ArtifactPathError("the artifact path contains a control character", path)
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ArtifactPathError("the artifact path is not valid Unicode", path) from None
    if size > MAX_PATH_BYTES:
        raise ArtifactPathError(
            f"the artifact path is {size} bytes long; at most {MAX_PATH_BYTES} are allowed", path
        )
    if path.startswith("/"):
        raise ArtifactPathError("the artifact path must be relative (no leading '/')", path)
    text = path[:-1] if path.endswith("/") else path
    if not text:
        if allow_root:
            return ()
        raise ArtifactPathError("the artifact path is empty", path)
    parts = tuple(text.split("/"))
    if len(parts) > MAX_DEPTH:
        raise ArtifactPathError(f"the artifact path is deeper than {MAX_DEPTH} folders", path)
    for part in parts:
        if part == "":
            raise ArtifactPathError("the artifact path contains an empty component ('//')", path)
        if part in (".", ".."):
            raise ArtifactPathError(f"the artifact path contains a {part!r} component", path)
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ArtifactPathError(
                f"a name in the artifact path is longer than {MAX_NAME_BYTES} bytes", path
            )
        if part.startswith(TEMP_PREFIX):
            raise ArtifactPathError(f"names starting with {TEMP_PREFIX!r} are reserved", path)
    return parts


class ArtifactStream(abc.ABC):
    """An artifact opened for reading: its size, then its bytes in chunks.

    Use as an async context manager (it is closed on exit) and iterate it asynchronously.
    """

    size: int

    @abc.abstractmethod
    def _read(self) -> bytes:
        """Return the next chunk (empty at the end); blocking."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the underlying file or connection; blocking."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._read):
            yield chunk

    async def read_all(self) -> bytes:
        """Return the rest of the artifact (for small ones: tests, metadata files)."""
        return b"".join([chunk async for chunk in self])

    async def close(self) -> None:
        """Release the artifact."""
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> ArtifactStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


#: What uploads read: an async or sync iterable of byte chunks, a binary file, or bytes.
Source = AsyncIterable[bytes] | Iterable[bytes] | BinaryIO


async def _chunks_of(data: Source) -> AsyncIterator[bytes]:
    """Yield the chunks of an async or sync byte stream (sync reads run in a thread)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    if isinstance(data, AsyncIterable):
        async for chunk in data:
            yield bytes(chunk)
        return
    read = getattr(data, "read", None)
    if callable(read):
        # A binary file: fixed-size reads, not the lines its iterator would give.
        while chunk := await asyncio.to_thread(read, CHUNK):
            yield bytes(chunk)
        return
    it = iter(data)
    while True:
        item = await asyncio.to_thread(_next_chunk, it)
        if item is None:
            return
        yield bytes(item)


def _next_chunk(it: Iterator[bytes]) -> bytes | None:
    return next(it, None)


def _too_large(path: str, limit: int) -> ArtifactTooLargeError:
    return ArtifactTooLargeError(
        f"the artifact is larger than the upload limit of {limit} bytes", path, limit
    )


class ArtifactStore(abc.ABC):
    """Where artifacts are kept. Paths are relative and checked by :func:`split_path`."""

    @abc.abstractmethod
    async def put(self, path: str, data: Source, max_size: int | None = None) -> int:
        """Store the bytes of ``data`` as the file ``path``, replacing any file there.

        Parameters
        ----------
        path
            Where, relative to the store's root.
        data
            An async or sync iterable of byte chunks, a binary file, or ``bytes``.
        max_size
            Largest size accepted in bytes (None: no cap).

        Returns
        -------
        int
            The number of bytes stored.

        Raises
        ------
        ArtifactPathError
            For a bad path, or one that runs into a file or a link.
        ArtifactTooLargeError
            When ``data`` is larger than ``max_size`` (nothing is stored).
        """

    @abc.abstractmethod
    async def open(self, path: str) -> ArtifactStream:
        """Open the file ``path`` for streaming.

        Raises
        ------
        ArtifactPathError
            For a bad path, or one naming a folder.
        ArtifactNotFoundError
            When there is no file there.
        """

    @abc.abstractmethod
    async def list_dir(self, path: str = "") -> list[ArtifactEntry]:
        """Return the entries directly inside folder ``path`` ("" is the root), by name.

        A path naming a file or nothing gives an empty list, as in MLflow's stores.

        Raises
        ------
        ArtifactPathError
            For a bad path.
        """

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Delete the file or the whole folder ``path``; nothing there is not an error.

        Raises
        ------
        ArtifactPathError
            For a bad path.
        """

    async def get_bytes(self, path: str) -> bytes:
        """Return the whole file ``path`` (for small artifacts)."""
        async with await self.open(path) as stream:
            return await stream.read_all()


# --- the local folder -------------------------------------------------------------------------


def _link_or(exc: OSError, dfd: int, name: str) -> OSError:
    """Return ELOOP when ``name`` in ``dfd`` is a symbolic link, else ``exc`` itself.

    Linux answers ``O_DIRECTORY | O_NOFOLLOW`` on a link with ENOTDIR, as for a file; the
    message should say which it was.
    """
    if exc.errno == errno.ENOTDIR:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                return OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    return exc


def _path_error(exc: OSError, path: str) -> ArtifactError:
    """Translate an OS error met while walking ``path`` into an artifact error."""
    if exc.errno == errno.ELOOP:
        return ArtifactPathError("the artifact path runs through a symbolic link", path)
    if exc.errno == errno.ENOTDIR:
        return ArtifactPathError("the artifact path runs through a file, not a folder", path)
    if exc.errno == errno.EISDIR:
        return ArtifactPathError("the artifact path names a folder, not a file", path)
    if exc.errno == errno.ENAMETOOLONG:
        return ArtifactPathError("the artifact path or a name in it is too long", path)
    if exc.errno == errno.ENOENT:
        return ArtifactNotFoundError("no artifact at this path", path)
    raise exc


class _LocalStream(ArtifactStream):
    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def _read(self) -> bytes:
        return os.read(self._fd, CHUNK)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalArtifactStore(ArtifactStore):
    """Artifacts in a folder of this machine, safe against paths that try to leave it.

    Parameters
    ----------
    root
        The folder; created (0700, with its parents) if missing, tightened to 0700 if looser.
        Symbolic links in ``root`` itself are resolved once here (an operator's choice); none
        are followed below it.

    Raises
    ------
    InputError
        When the root cannot be created or is not a folder.
    """

    def __init__(self, root: str | Path) -> None:
        try:
            Path(root).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self.root = Path(os.path.realpath(root))
            fd = os.open(self.root, _DIR_FLAGS)
            try:
                # Private like the data dir: an existing looser folder is tightened.
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & ~_DIR_MODE:
                    os.fchmod(fd, mode & _DIR_MODE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise InputError(
                f"cannot use {root} as the artifact folder ({exc.strerror or exc})",
                field="artifact_root",
            ) from None

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    # Each walk returns an open descriptor of the folder holding the last component; the
    # caller closes it.

    def _walk(self, parts: tuple[str, ...], path: str, create: bool) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, _DIR_MODE, dir_fd=fd)
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _path_error(_link_or(exc, fd, name), path) from None
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_write(self, path: str) -> tuple[int, int, str, str]:
        parts = split_path(path)
        dfd = self._walk(parts[:-1], path, create=True)
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(dfd)
            raise
        else:
            if stat.S_ISDIR(st.st_mode):
                os.close(dfd)
                raise ArtifactPathError(
                    "a folder already has this path; an artifact file cannot replace it", path
                )
        tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            ffd = os.open(tmp, _WRITE_FLAGS, _FILE_MODE, dir_fd=dfd)
        except BaseException:
            os.close(dfd)
            raise
        return dfd, ffd, tmp, parts[-1]

    @staticmethod
    def _abandon(dfd: int, ffd: int, tmp: str) -> None:
        os.close(ffd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)

    @staticmethod
    def _commit(dfd: int, ffd: int, tmp: str, name: str, path: str) -> None:
        try:
            os.fsync(ffd)
            os.close(ffd)
            ffd = -1
            try:
                # rename() replaces a file or a link named ``name`` (never following it); a
                # folder of that name makes it fail, and the upload is refused.
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise ArtifactPathError(
                        "a folder already has this path; an artifact file cannot replace it",
                        path,
                    ) from None
                raise
            os.fsync(dfd)
        finally:
            if ffd >= 0:
                os.close(ffd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            os.close(dfd)

    async def put(self, path: str, data: Source, max_size: int | None = None) -> int:
        """Store ``data`` as the file ``path`` (see :meth:`ArtifactStore.put`)."""
        dfd, ffd, tmp, name = await asyncio.to_thread(self._open_write, path)
        total = 0
        try:
            async for chunk in _chunks_of(data):
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise _too_large(path, max_size)
                await asyncio.to_thread(_write_all, ffd, chunk)
        except BaseException:
            self._abandon(dfd, ffd, tmp)
            raise
        await asyncio.to_thread(self._commit, dfd, ffd, tmp, name, path)
        return total

    def _open_read(self, path: str) -> _LocalStream:
        parts = split_path(path)
        dfd = self._walk(parts[:-1], path, create=False)
        try:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
            except OSError as exc:
                raise _path_error(exc, path) from None
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise ArtifactPathError("the artifact path names a folder, not a file", path)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ArtifactPathError("the artifact path names something other than a file", path)
        os.set_blocking(fd, True)
        return _LocalStream(fd, st.st_size)

    async def open(self, path: str) -> ArtifactStream:
        """Open the file ``path`` (see :meth:`ArtifactStore.open`)."""
        return await asyncio.to_thread(self._open_read, path)

    def _list(self, path: str) -> list[ArtifactEntry]:
        parts = split_path(path, allow_root=True)
        try:
            fd = self._walk(parts, path, create=False)
        except ArtifactNotFoundError:
            return []
        except ArtifactPathError:
            # A file at the path (or on the way) lists as nothing, like MLflow's own stores;
            # a link is still refused.
            if parts and self._is_file(parts, path):
                return []
            raise
        out: list[ArtifactEntry] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith(TEMP_PREFIX):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        out.append(ArtifactEntry(entry.name, True, None))
                    elif stat.S_ISREG(st.st_mode):
                        out.append(ArtifactEntry(entry.name, False, st.st_size))
                    # Links and special files are not artifacts: never listed, never followed.
        finally:
            os.close(fd)
        return sorted(out, key=lambda e: e.name)

    def _is_file(self, parts: tuple[str, ...], path: str) -> bool:
        try:
            dfd = self._walk(parts[:-1], path, create=False)
        except ArtifactError:
            return False
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(dfd)
        return stat.S_ISREG(st.st_mode)

    async def list_dir(self, path: str = "") -> list[ArtifactEntry]:
        """List folder ``path`` (see :meth:`ArtifactStore.list_dir`)."""
        return await asyncio.to_thread(self._list, path)

    def _delete(self, path: str) -> None:
        parts = split_path(path)
        try:
            dfd = self._walk(parts[:-1], path, create=False)
        except ArtifactNotFoundError:
            return
        try:
            _remove(dfd, parts[-1])
        finally:
            os.close(dfd)

    async def delete(self, path: str) -> None:
        """Delete the file or folder ``path`` (see :meth:`ArtifactStore.delete`)."""
        await asyncio.to_thread(self._delete, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(dfd: int, name: str) -> None:
    """Remove ``name`` inside folder ``dfd``: a file, a link (not its target) or a folder tree."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        with os.scandir(sub) as it:
            names = [entry.name for entry in it]
        for child in names:
            _remove(sub, child)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dfd)


# --- S3-compatible object storage -------------------------------------------------------------

#: S3's smallest part of a multipart upload (all but the last), in bytes.
S3_PART = 8 << 20


class _S3Stream(ArtifactStream):
    def __init__(self, body: Any, size: int) -> None:
        self._body = body
        self.size = size

    def _read(self) -> bytes:
        return bytes(self._body.read(CHUNK))

    def _close(self) -> None:
        self._body.close()


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3-compatible bucket under a key prefix.

    Parameters
    ----------
    bucket
        The bucket (it must exist).
    prefix
        Key prefix, e.g. ``cplat/artifacts`` (no leading or trailing ``/`` needed).
    endpoint_url
        The service's URL for S3-compatible stores (MinIO, Ceph, ...); empty: AWS.
    region
        The region; empty: boto3's default chain.
    access_key_id, secret_access_key
        Credentials; empty: boto3's default chain (``AWS_ACCESS_KEY_ID``, profiles, roles).
        They are handed to boto3 only, never logged nor shown by ``repr``.
    client
        A ready boto3 S3 client (tests); the other connection settings are then unused.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = "/".join(split_path(prefix, allow_root=True))
        self.endpoint_url = endpoint_url
        if client is None:
            import boto3  # type: ignore[import-untyped]

            kwargs: dict[str, Any] = {}
            if endpoint_url:
                kwargs["endpoint_url"] = endpoint_url
            if region:
                kwargs["region_name"] = region
            if access_key_id or secret_access_key:
                kwargs["aws_access_key_id"] = access_key_id
                kwargs["aws_secret_access_key"] = secret_access_key
            client = boto3.client("s3", **kwargs)
        self._s3 = client

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r}{where})"

    def _key(self, parts: tuple[str, ...]) -> str:
        key = "/".join((self.prefix, *parts)) if self.prefix else "/".join(parts)
        if len(key.encode("utf-8")) > MAX_PATH_BYTES:
            raise ArtifactPathError(
                f"the artifact path with the bucket's prefix is over {MAX_PATH_BYTES} bytes"
            )
        return key

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        return ""

    async def put(self, path: str, data: Source, max_size: int | None = None) -> int:
        """Store ``data`` as the object ``path`` (see :meth:`ArtifactStore.put`).

        Up to one part (8 MiB) goes in one ``PutObject``; more streams as a multipart upload,
        aborted when the stream fails or passes ``max_size``.
        """
        key = self._key(split_path(path))
        total = 0
        buf = bytearray()
        upload_id = ""
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in _chunks_of(data):
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise _too_large(path, max_size)
                buf += chunk
                while len(buf) >= S3_PART:
                    if not upload_id:
                        started = await asyncio.to_thread(
                            self._s3.create_multipart_upload, Bucket=self.bucket, Key=key
                        )
                        upload_id = str(started["UploadId"])
                    body = bytes(buf[:S3_PART])
                    del buf[:S3_PART]
                    number = len(parts) + 1
                    done = await asyncio.to_thread(
                        self._s3.upload_part,
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                    parts.append({"PartNumber": number, "ETag": done["ETag"]})
            if not upload_id:
                await asyncio.to_thread(
                    self._s3.put_object, Bucket=self.bucket, Key=key, Body=bytes(buf)
                )
                return total
            if buf or not parts:
                number = len(parts) + 1
                done = await asyncio.to_thread(
                    self._s3.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(buf),
                )
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
            await asyncio.to_thread(
                self._s3.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
            upload_id = ""
            return total
        finally:
            if upload_id:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self._s3.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                    )

    def _open(self, path: str) -> _S3Stream:
        key = self._key(split_path(path))
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFoundError("no artifact at this path", path) from None
            raise
        return _S3Stream(got["Body"], int(got["ContentLength"]))

    async def open(self, path: str) -> ArtifactStream:
        """Open the object ``path`` (see :meth:`ArtifactStore.open`)."""
        return await asyncio.to_thread(self._open, path)

    def _pages(self, prefix: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        yield from self._s3.get_paginator("list_objects_v2").paginate(**kwargs)

    def _list(self, path: str) -> list[ArtifactEntry]:
        parts = split_path(path, allow_root=True)
        base = self._key(parts) + "/" if (parts or self.prefix) else ""
        out: list[ArtifactEntry] = []
        for page in self._pages(base, delimiter=True):
            for common in page.get("CommonPrefixes", []):
                name = str(common["Prefix"])[len(base) :].rstrip("/")
                if name:
                    out.append(ArtifactEntry(name, True, None))
            for obj in page.get("Contents", []):
                name = str(obj["Key"])[len(base) :]
                if name and "/" not in name:
                    out.append(ArtifactEntry(name, False, int(obj["Size"])))
        return sorted(out, key=lambda e: e.name)

    async def list_dir(self, path: str = "") -> list[ArtifactEntry]:
        """List the "folder" ``path`` (see :meth:`ArtifactStore.list_dir`)."""
        return await asyncio.to_thread(self._list, path)

    def _delete(self, path: str) -> None:
        key = self._key(split_path(path))
        self._s3.delete_object(Bucket=self.bucket, Key=key)
        batch: list[dict[str, str]] = []
        for page in self._pages(key + "/", delimiter=False):
            for obj in page.get("Contents", []):
                batch.append({"Key": str(obj["Key"])})
                if len(batch) == 1000:  # DeleteObjects takes at most 1,000 keys
                    self._delete_batch(batch)
                    batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        done = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        if done.get("Errors"):
            first = done["Errors"][0]
            raise ArtifactError(
                f"the object store refused to delete {len(done['Errors'])} object(s), e.g. "
                f"{first.get('Key')!r}: {first.get('Message', first.get('Code', ''))}"
            )

    async def delete(self, path: str) -> None:
        """Delete the object ``path`` and every object under ``path/``."""
        await asyncio.to_thread(self._delete, path)
