"""The feature store's file operations, behind ``pyarrow.fs``: a local folder or a folder in object storage.

A store location is a :class:`~pathlib.Path` (a local or shared folder) or an :class:`ObjectPath`
(any URI that :meth:`pyarrow.fs.FileSystem.from_uri` opens: ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``s3://bucket/prefix?endpoint_override=host:port&scheme=http`` for an
S3-compatible server). Both name children with ``/`` and have ``name`` and ``parent``; every
read, listing and write goes through the functions here.

Writes: on a local folder a file is written under a temporary name and renamed (as before); an
object store has no rename, so a file is serialized whole in memory and sent as one upload,
which the store makes visible only once complete (a writer that dies mid-upload leaves nothing;
an upload that fails inside the process may leave a partial object, which no manifest names).

Credentials come from the environment as pyarrow reads them (``AWS_ACCESS_KEY_ID``...). A
secret given in the URI (``s3://key:secret@bucket``) is used by this process but never shown:
``str()`` of a location drops it (what is recorded, e.g. in a study), :attr:`ObjectPath.masked`
shows ``***`` in its place (what errors print).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from difffeat_tune._errors import StoreError
from difffeat_tune._io import atomic_write, atomic_write_bytes

#: Bytes read at a time when hashing a file.
_HASH_CHUNK = 1 << 20
#: Schemes whose first path component is a bucket that must exist before anything is written.
_BUCKET_SCHEMES = ("s3", "gs", "gcs")


@dataclass(frozen=True)
class ObjectPath:
    """A file or folder in a filesystem that pyarrow opens from a URI.

    Example:
        >>> root = ObjectPath.parse("s3://bucket/features?endpoint_override=127.0.0.1:9000&scheme=http")
        >>> str(root / "shapes-ab12" / "dataset.json")
        's3://bucket/features/shapes-ab12/dataset.json?endpoint_override=127.0.0.1:9000&scheme=http'
    """

    scheme: str
    netloc: str = field(repr=False)  # may hold ``user:secret@``: never shown
    path: str
    query: str = ""
    _fs: list[pafs.FileSystem] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def parse(cls, uri: str) -> ObjectPath:
        parts = urlsplit(uri)
        return cls(parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), parts.query)

    def _uri(self, netloc: str) -> str:
        return urlunsplit((self.scheme, netloc, self.path, self.query, ""))

    def __str__(self) -> str:
        return self._uri(self.netloc.rpartition("@")[2])

    @property
    def masked(self) -> str:
        """The URI with any secret replaced by ``***``."""
        user, at, host = self.netloc.rpartition("@")
        return self._uri(f"{user.partition(':')[0]}:***@{host}" if at else host)

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.netloc, self.path.rpartition("/")[0], self.query, self._fs)

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.scheme, self.netloc, f"{self.path}/{name}", self.query, self._fs)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The filesystem (opened once per root, shared by its children) and this path in it."""
        if not self._fs:
            try:
                fs, _ = pafs.FileSystem.from_uri(urlunsplit((self.scheme, self.netloc, "", self.query, "")))
            except (OSError, pa.ArrowException) as exc:
                raise unreachable(self, exc) from None
            self._fs.append(fs)
        host = self.netloc.rpartition("@")[2]
        return self._fs[0], f"{host}{self.path}" if self.scheme in _BUCKET_SCHEMES else self.path

    def is_file(self) -> bool:
        return is_file(self)


#: Where a store, a data set or an extraction lives.
Location = Path | ObjectPath


def unreachable(location: ObjectPath, exc: BaseException) -> StoreError:
    """The error for an object store that cannot be reached or refuses a request."""
    detail = re.sub(r"\s+", " ", str(exc)).strip()
    return StoreError(f"feature store {location.masked}: the object store failed: {detail}",
                      "check the URI's bucket and endpoint_override, and the credentials in the environment")


def _fs(location: Location) -> tuple[pafs.FileSystem, str]:
    if isinstance(location, ObjectPath):
        return location.filesystem()
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def _call(location: Location, what, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a pyarrow filesystem call, turning an object store's failure into one :class:`StoreError`."""
    try:
        return what(*args, **kwargs)
    except OSError as exc:
        if isinstance(location, ObjectPath):
            raise unreachable(location, exc) from None
        raise


def is_local(location: Location) -> bool:
    return not isinstance(location, ObjectPath)


def check_reachable(location: Location) -> None:
    """Fail early, with one clear error, on an object store that cannot be reached or a missing bucket."""
    if not isinstance(location, ObjectPath) or location.scheme not in _BUCKET_SCHEMES:
        return
    fs, inner = location.filesystem()
    bucket = inner.split("/", 1)[0]
    if _call(location, fs.get_file_info, bucket).type == pafs.FileType.NotFound:
        raise StoreError(f"feature store {location.masked}: bucket {bucket!r} does not exist",
                         "create the bucket, or fix the URI")


def info(location: Location) -> pafs.FileInfo:
    fs, inner = _fs(location)
    return _call(location, fs.get_file_info, inner)


def is_file(location: Location) -> bool:
    return bool(info(location).type == pafs.FileType.File)


def subfolders(location: Location) -> list[str]:
    """Names of the folders directly under ``location`` (none if it does not exist), sorted."""
    fs, inner = _fs(location)
    found = _call(location, fs.get_file_info, pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in found if i.type == pafs.FileType.Directory)


def files(location: Location) -> list[pafs.FileInfo]:
    """The files directly under ``location`` (none if it does not exist)."""
    fs, inner = _fs(location)
    found = _call(location, fs.get_file_info, pafs.FileSelector(inner, allow_not_found=True))
    return [i for i in found if i.type == pafs.FileType.File]


def read_bytes(location: Location) -> bytes | None:
    """The whole file, or ``None`` if it does not exist."""
    fs, inner = _fs(location)
    try:
        with fs.open_input_stream(inner) as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if isinstance(location, ObjectPath):
            if "NoSuchKey" in str(exc) or "NOT_FOUND" in str(exc).upper():
                return None
            raise unreachable(location, exc) from None
        raise


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file: renamed into place locally, one complete upload on an object store."""
    if not isinstance(location, ObjectPath):
        atomic_write_bytes(location, data)
        return
    fs, inner = location.filesystem()
    out = _call(location, fs.open_output_stream, inner)
    _call(location, out.write, data)
    _call(location, out.close)


def write_table(location: Location, table: pa.Table) -> None:
    """Write a Parquet file (zstd) as :func:`write_bytes` writes bytes."""
    if not isinstance(location, ObjectPath):
        atomic_write(location, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(location, sink.getvalue().to_pybytes())


def read_table(location: Location, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (only ``columns``); local files are memory-mapped."""
    if not isinstance(location, ObjectPath):
        return pq.read_table(location, columns=columns, memory_map=True)
    fs, inner = location.filesystem()
    handle = _call(location, fs.open_input_file, inner)
    return pq.read_table(handle, columns=columns)


def read_schema(location: Location) -> pa.Schema:
    if not isinstance(location, ObjectPath):
        return pq.read_schema(location)
    fs, inner = location.filesystem()
    return pq.read_schema(_call(location, fs.open_input_file, inner))


def sha256(location: Location) -> str:
    fs, inner = _fs(location)
    digest = hashlib.sha256()
    with _call(location, fs.open_input_stream, inner) as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
