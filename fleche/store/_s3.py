"""The S3 store: one request per operation, create-only PUTs, errors that say what is wrong.

Over ``s3fs.S3FileSystem`` (any S3 implementation: AWS, Ceph radosgw, MinIO,
moto). What it does differently from the generic ``ObjectStore``:

- A read is one GET (``cat_file`` with ``max_concurrency=1``: s3fs would
  otherwise HEAD every object for its size before the GET). A missing key is
  a miss; a missing bucket, a refused request or an unreachable endpoint is an
  error, never a miss.
- A value is written with one create-only PUT (``If-None-Match: *``): the
  server refuses it with 412 when the name exists, so an existing object costs
  one request and is never rewritten. Values above ``HEAD_FIRST`` bytes are
  HEADed first, so an existing 100 MB object is not uploaded again only to be
  refused. A server that rejects the header (501) gets HEAD-then-PUT from then
  on. Call records are plain PUTs: last writer wins, and a PUT is atomic.
- No directories: nothing is created before a write, there is no ``tmp/``.
- Listings are one recursive, paginated LIST of ``objects/`` (or ``calls/``):
  ``ceil(N / 1000)`` requests for N names, where one listing per fan-out
  directory would cost at least 256.
- No listings cache (``use_listings_cache=False``): a shared cache must see
  what other writers put there a moment ago.
- A large value goes up as a multipart upload, aborted when it fails. When
  even the abort fails (the endpoint is gone), its parts stay in the bucket,
  billed and invisible to listings: one :class:`~fleche.errors.FlecheWarning`
  names the upload, and ``fleche gc`` aborts incomplete uploads under the
  store's prefix once older than ``--grace`` (:meth:`S3Store.list_uploads`).

Credentials and endpoint come from the usual AWS sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``~/.aws``) or from storage options: ``key=``,
``secret=``, ``endpoint_url=``, and anything else ``s3fs.S3FileSystem`` takes.

A failure budget (:func:`make_filesystem`): each request is tried at most
``MAX_ATTEMPTS`` times (botocore's standard retry mode), with s3fs's own retry
loop off, so an endpoint that is down costs the first call one request's
attempts (1-3 s of backoff) rather than s3fs's retries of botocore's retries
(up to 5 x 5 x 5 attempts: 9-53 s measured); the cache is then skipped for a
while (``fleche.decorator``). ``config_kwargs=`` and ``retries=`` override the
defaults (docs/backends.md); ``retries=`` is a constructor argument of fleche's
filesystem class, so fsspec's instance cache keys it (:func:`_filesystem_class`).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fleche.errors import ConfigError, warn_user
from fleche.store._base import BytesLike, ObjectStore, ReadableFile, is_function_id, is_oid

try:  # botocore comes with s3fs; without it S3Store cannot be built anyway
    from botocore.exceptions import BotoCoreError, NoCredentialsError
except ImportError:  # pragma: no cover - exercised only without the s3 extra
    BotoCoreError = NoCredentialsError = ()


HEAD_FIRST = 1 << 20
"""Values larger than this are HEADed before their create-only PUT (bytes)."""
MULTIPART_MIN = 64 << 20
"""Values larger than this are uploaded in parts (multipart upload), never joined in memory."""
PART_SIZE = 16 << 20
"""Bytes per part of a multipart upload (S3 wants at least 5 MiB but for the last)."""

MAX_ATTEMPTS = 3
"""Tries per request (botocore's standard retry mode: jittered backoff of up to 1 s, then 2 s).

Enough to ride out a dropped connection or a throttled (503 SlowDown) request;
an endpoint that is down costs one call 3 attempts, not s3fs's 5 x 5 x 5."""
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection (s3fs's default, said once here).

A live endpoint connects in one round trip (well under 1 s even across
continents; the kernel completes it even when the server process is busy), and
a lost SYN is resent after 1 s and 3 s, so 5 s fails only a host that does not
answer; that attempt is then retried like any other."""
READ_TIMEOUT = 15.0
"""Seconds to wait for each read of a response (s3fs's default, said once here).

Not the time of a whole transfer: the wait for the first byte of an answer, or
between two chunks. A slow but live server (a loaded radosgw, a large PUT
being stored) answers well within it; only a stalled server reaches it."""

# Answers meaning "this server does not do conditional PUTs" (AWS before 2024: 501).
_NO_CONDITIONAL = {"NotImplemented", "501"}
# AWS: a conditional PUT racing another write of the same key; retry it.
_CONFLICT = {"ConditionalRequestConflict", "409"}
_PRECONDITION = {"PreconditionFailed", "412"}


def _error_code(exc: BaseException) -> str:
    """The S3 error code (``NoSuchBucket``, ``AccessDenied``...) behind an s3fs exception."""
    seen: BaseException | None = exc
    for _ in range(5):  # s3fs chains the botocore ClientError as the cause
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return ""


@dataclass(frozen=True)
class Upload:
    """An incomplete multipart upload under a store's prefix: its parts are kept (and billed).

    ``key`` is relative to the store's root (``objects/ab/...``); ``initiated``
    is when the server says it began (epoch seconds, the server's clock), or None.
    """

    key: str
    upload_id: str
    initiated: float | None


def _body(parts: Sequence[BytesLike]) -> bytes | bytearray:
    """One request body: botocore takes bytes or bytearray, not memoryview."""
    if len(parts) == 1 and isinstance(parts[0], (bytes, bytearray)):
        return parts[0]
    return b"".join(parts)


def _nbytes(parts: Sequence[BytesLike]) -> int:
    return sum(len(p) if isinstance(p, bytes) else memoryview(p).nbytes for p in parts)


def _retries_configured(profile: str | None) -> bool:
    """Whether the AWS settings choose the retries (``AWS_MAX_ATTEMPTS``, ``retry_mode``...).

    The environment, then the profile's ``max_attempts`` / ``retry_mode`` in the
    AWS config file (read only when there is one: ~8 ms).
    """
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        return True
    path = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if not os.path.exists(path):
        return False
    try:
        from botocore.session import Session

        scoped = Session(profile=profile).get_scoped_config()
    except Exception:  # noqa: BLE001 - a missing profile, a bad file: s3fs says so when it connects
        return False
    return "max_attempts" in scoped or "retry_mode" in scoped


def _failure_budget(opts: dict[str, Any]) -> int:
    """Fill in the client's timeouts and retries (``config_kwargs``); s3fs's own retries.

    Each default applies only where the caller said nothing: a key of
    ``config_kwargs=`` (``retries``, ``connect_timeout``, ``read_timeout``:
    botocore's ``Config``) wins, and so do ``AWS_MAX_ATTEMPTS`` /
    ``AWS_RETRY_MODE`` and the profile's ``max_attempts`` / ``retry_mode`` in
    the AWS config file. Returns s3fs's retry count
    (``retries=``, default 1: botocore's retries already cover every request,
    and s3fs's loop, nested twice around a read, multiplies them).
    """
    config = opts.get("config_kwargs") or {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"config_kwargs={config!r}: expected a table of botocore Config settings, "
            "e.g. {'read_timeout': 60, 'retries': {'total_max_attempts': 5}}"
        )
    config = dict(config)
    if isinstance(config.get("retries"), dict):  # botocore fills in its "mode": not the caller's
        config["retries"] = dict(config["retries"])
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("read_timeout", READ_TIMEOUT)
    if "retries" not in config and not _retries_configured(opts.get("profile")):
        config["retries"] = {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    opts["config_kwargs"] = config
    retries = opts.pop("retries", 1)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise ConfigError(
            f"retries={retries!r}: expected a whole number of at least 1 (how many times "
            "s3fs itself tries each operation; the client's own retries are "
            "config_kwargs={'retries': {'total_max_attempts': N}})"
        )
    return retries


def make_filesystem(storage_options: dict[str, Any]) -> Any:
    """An ``s3fs.S3FileSystem`` from fleche's storage options (``endpoint_url=`` accepted).

    With a bounded failure budget (:func:`_failure_budget`): a dead endpoint
    costs one request's few attempts, not minutes of nested retries.
    """
    try:
        cls = _filesystem_class()
    except ImportError as e:
        raise ConfigError(f"s3:// stores need s3fs ({e}): pip install 'fleche[s3]'") from e
    opts = dict(storage_options)
    retries = _failure_budget(opts)
    if opts.get("use_listings_cache"):
        raise ConfigError(
            "use_listings_cache=True does not apply to a fleche store: a shared cache "
            "must see objects other writers add"
        )
    opts["use_listings_cache"] = False
    endpoint = opts.pop("endpoint_url", None)
    if endpoint is not None:  # s3fs takes it too, but older releases only in client_kwargs
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if client_kwargs.get("endpoint_url", endpoint) != endpoint:
            raise ConfigError(
                f"endpoint_url={endpoint!r} and client_kwargs['endpoint_url']="
                f"{client_kwargs['endpoint_url']!r} disagree: give one"
            )
        client_kwargs["endpoint_url"] = endpoint
        opts["client_kwargs"] = client_kwargs
    return cls(retries=retries, **opts)


_FS_CLASS: list[Any] = []  # [the class] once built: import fleche does not load s3fs


def _filesystem_class() -> Any:
    """``S3FileSystem`` with ``retries=`` in its constructor (s3fs's takes none: its loop
    reads the instance's ``retries``, class default 5).

    fsspec keeps one instance per class and constructor arguments, so stores that differ
    only in ``retries=`` get a filesystem each, and a caller's own ``S3FileSystem`` with
    the same arguments is never the one whose ``retries`` fleche sets. Reachable as
    ``fleche.store._s3.FlecheS3FileSystem`` (module ``__getattr__``), so a pickled
    filesystem is rebuilt, with its ``retries``, in another process.
    """
    if not _FS_CLASS:
        import s3fs

        class FlecheS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
            def __init__(self, *args: Any, retries: int = 1, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.retries = retries

        FlecheS3FileSystem.__module__ = __name__
        FlecheS3FileSystem.__qualname__ = "FlecheS3FileSystem"
        _FS_CLASS.append(FlecheS3FileSystem)
    return _FS_CLASS[0]


def __getattr__(name: str) -> Any:
    if name == "FlecheS3FileSystem":
        return _filesystem_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class S3Store(ObjectStore):
    """A store under ``s3://bucket/prefix``; the bucket must exist.

    ``S3Store("s3://bucket/prefix", endpoint_url=..., key=..., secret=...)``
    builds its own ``S3FileSystem``; ``fs=`` shares one (another handle on the
    same store, a filesystem set up by the caller). Opening reads
    ``fleche.json`` (one GET), which also checks the bucket and the credentials.
    """

    def __init__(
        self,
        url: str,
        *,
        fs: Any = None,
        read_only: bool = False,
        durable: bool = False,
        **storage_options: Any,
    ) -> None:
        if fs is None:
            fs = make_filesystem(storage_options)
        elif storage_options:
            raise TypeError(f"S3Store: storage options {sorted(storage_options)} given with fs=")
        root = fs._strip_protocol(url).strip("/")
        bucket = root.partition("/")[0]
        if not bucket:
            raise ConfigError(f"{url!r} names no bucket: expected s3://bucket[/prefix]")
        self.bucket = bucket
        # False once the server has refused If-None-Match: HEAD-then-PUT from then on.
        self._conditional = True
        self._cat_kwargs = (
            {"max_concurrency": 1}  # no HEAD for the size before the GET
            if "max_concurrency" in inspect.signature(fs._cat_file).parameters
            else {}
        )
        super().__init__(fs, root, read_only=read_only, durable=durable)

    _page_size: int | None = None  # keys per LIST page: the server's (1000 on AWS) unless set

    def _make_url(self) -> str:
        return f"s3://{self.root}"

    # -- errors ------------------------------------------------------------------

    def _endpoint(self) -> str:
        try:
            return str(self.fs.s3.meta.endpoint_url)
        except Exception:  # noqa: BLE001 - only for an error message
            return "the default AWS endpoint"

    @contextmanager
    def _errors(self, path: str, action: str) -> Iterator[None]:
        """Turn s3fs/botocore failures into errors that say what to do; a missing key stays FileNotFoundError."""
        try:
            yield
        except FileNotFoundError as e:
            if _error_code(e) == "NoSuchBucket":
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist at {self._endpoint()} "
                    f"(opening {self.url}): create it first (e.g. `aws s3 mb s3://{self.bucket}`); "
                    "fleche does not create buckets"
                ) from e
            raise
        except PermissionError as e:
            raise PermissionError(
                f"S3 refused to {action} s3://{path} at {self._endpoint()}: "
                f"{_error_code(e) or 'denied'}: {e}. Check the credentials (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or the key= and secret= storage options) "
                f"and that they allow s3:GetObject, s3:PutObject and s3:ListBucket on bucket "
                f"{self.bucket!r} (without s3:ListBucket, S3 answers 403 for a missing key)"
            ) from e
        except NoCredentialsError as e:
            raise PermissionError(
                f"no AWS credentials to {action} s3://{path}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass key= and secret= "
                "(anon=True for a public bucket)"
            ) from e
        except BotoCoreError as e:  # unreachable endpoint, bad config: an OSError like the rest
            raise OSError(f"cannot {action} s3://{path} at {self._endpoint()}: {e}") from e

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    # -- primitives ----------------------------------------------------------------

    def _read(self, path: str) -> bytes:
        with self._errors(path, "read"):
            data: bytes = self.fs.cat_file(path, **self._cat_kwargs)
            return data

    def _write(self, path: str, parts: Sequence[BytesLike]) -> None:
        with self._errors(path, "write"):
            self.fs.pipe_file(path, _body(parts))

    def _write_new(self, path: str, data: bytes) -> bool:
        return self._put_new(path, (data,))

    def _put_new(self, path: str, parts: Sequence[BytesLike]) -> bool:
        """Create ``path`` unless it exists: one create-only PUT; False when it existed."""
        body = _body(parts)
        for attempt in range(6):
            if not self._conditional:
                break
            try:
                with self._errors(path, "write"):
                    self.fs.pipe_file(path, body, mode="create")
            except FileExistsError:  # s3fs's name for 412 on If-None-Match
                return False
            except OSError as e:
                code = _error_code(e)
                if code in _PRECONDITION:
                    return False
                if code in _NO_CONDITIONAL:
                    self._conditional = False  # this server: HEAD-then-PUT from now on
                    break
                if code in _CONFLICT and attempt < 5:
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise
            return True
        if self._exists(path):
            return False
        self._write(path, (body,))
        return True

    def _multipart(self, path: str, chunks: Iterable[BytesLike]) -> None:
        """Upload ``chunks`` as one object in ``PART_SIZE`` parts: bounded memory, atomic.

        The object appears only when the upload completes; a failure aborts it
        (no partial object, no parts left billed). Not create-only (servers
        differ on If-None-Match for multipart): the caller HEADs first, and two
        writers of one content-addressed name write the same bytes anyway.
        """
        bucket, key = self._split(path)
        with self._errors(path, "write"):
            upload = self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        uid = upload["UploadId"]
        done: list[dict[str, Any]] = []

        def send(body: bytes | bytearray) -> None:
            number = len(done) + 1
            with self._errors(path, "write"):
                part = self.fs.call_s3(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=uid,
                    PartNumber=number,
                    Body=body,
                )
            done.append({"ETag": part["ETag"], "PartNumber": number})

        try:
            pending = bytearray()
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view.nbytes:
                    take = min(view.nbytes, PART_SIZE - len(pending))
                    if not pending and take == PART_SIZE:
                        send(bytes(view[:take]))  # a whole part from one buffer: one copy
                    else:
                        pending += view[:take]
                        if len(pending) == PART_SIZE:
                            send(pending)
                            pending = bytearray()
                    view = view[take:]
            if pending or not done:
                send(pending)
            with self._errors(path, "write"):
                self.fs.call_s3(
                    "complete_multipart_upload",
                    Bucket=bucket,
                    Key=key,
                    UploadId=uid,
                    MultipartUpload={"Parts": done},
                )
        except BaseException:
            try:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=uid)
            except Exception as e:  # noqa: BLE001 - the first error is the one to raise
                warn_user(
                    f"fleche: a multipart upload to s3://{path} failed, and aborting it failed "
                    f"too ({e}): upload {uid} keeps its parts in bucket {bucket!r} under key "
                    f"{key!r} (billed as storage; no object appears). `fleche gc -s {self.url}` "
                    "aborts incomplete uploads older than --grace; so does a lifecycle rule of "
                    "the bucket (AbortIncompleteMultipartUpload)"
                )
            raise

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        self._multipart(path, chunks)

    def _read_ends(self, path: str, n: int) -> tuple[BytesLike, BytesLike]:
        with self._errors(path, "read"):  # a HEAD for the size, then two ranged GETs
            return super()._read_ends(path, n)

    # -- incomplete multipart uploads (fleche gc) ------------------------------------------

    def list_uploads(self) -> Iterator[Upload]:
        """Every incomplete multipart upload under this store's prefix (paginated listings).

        A writer killed mid-upload, or whose abort failed, leaves one; so does a
        writer uploading right now, which is why ``fleche gc`` only aborts those
        older than its grace.
        """
        bucket, prefix = self._split(self.root)
        start = len(prefix) + 1 if prefix else 0
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
        while True:
            with self._errors(self.root, "list the incomplete multipart uploads of"):
                page = self.fs.call_s3("list_multipart_uploads", **kwargs)
            for up in page.get("Uploads", ()):
                began = up.get("Initiated")
                yield Upload(
                    up["Key"][start:],
                    up["UploadId"],
                    began.timestamp() if hasattr(began, "timestamp") else None,
                )
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def abort_upload(self, upload: Upload) -> None:
        """Abort an incomplete upload of this store: its parts are deleted; one already gone is fine."""
        self._check_writable()
        path = f"{self.root}/{upload.key}"
        bucket, key = self._split(path)
        try:
            with self._errors(path, "abort the multipart upload of"):
                self.fs.call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload.upload_id
                )
        except FileNotFoundError:  # NoSuchUpload: completed or aborted meanwhile
            pass

    def _open_read(self, path: str) -> ReadableFile:
        """Ranged GETs of ``PART_SIZE`` bytes as the reader asks (s3fs's file, no read-ahead cache)."""
        with self._errors(path, "read"):
            f: ReadableFile = self.fs.open(path, "rb", block_size=PART_SIZE, cache_type="none")
            return f

    def _exists(self, path: str) -> bool:
        # One HEAD; fs.info would LIST after a 404 to look for a "directory".
        bucket, key = self._split(path)
        try:
            with self._errors(path, "read"):
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def _size(self, path: str) -> int:
        bucket, key = self._split(path)
        with self._errors(path, "read"):
            return int(self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ContentLength"])

    def _remove(self, path: str) -> None:
        with self._errors(path, "delete"):
            self.fs.rm_file(path)

    def _move(self, src: str, dst: str) -> None:
        with self._errors(src, "move"):
            self.fs.cp_file(src, dst)  # server-side copy; FileNotFoundError if src is gone
            self.fs.rm_file(src)

    def _ensure_dir(self, path: str) -> None:
        pass  # S3 has no directories: a key implies its prefixes

    def _list(self, path: str, *, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """Pages of one paginated ``ListObjectsV2`` under ``path/``."""
        bucket, key = self._split(path)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key}/" if key else ""}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if self._page_size:
            kwargs["MaxKeys"] = self._page_size
        while True:
            with self._errors(path, "list"):
                page = self.fs.call_s3("list_objects_v2", **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _list_keys(self, path: str) -> Iterator[str]:
        """Every key below ``path/``, relative to it."""
        key = self._split(path)[1]
        start = len(key) + 1 if key else 0
        for page in self._list(path):
            for obj in page.get("Contents", ()):
                yield obj["Key"][start:]

    def _list_dirs(self, path: str) -> Iterator[str]:
        for page in self._list(path, delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                yield common["Prefix"].rstrip("/").rpartition("/")[2]

    def _list_fanout(self, path: str) -> Iterator[str]:
        for rel in self._list_keys(path):
            # "ab/<30 hex>"; anything else is not ours
            if len(rel) == 33 and rel[2] == "/":
                oid = rel[:2] + rel[3:]
                if is_oid(oid):
                    yield oid

    # -- the public operations S3 does in fewer requests ---------------------------------

    def _publish(self, path: str, parts: Sequence[BytesLike]) -> None:
        """One create-only PUT; an existing object is kept (the server refuses the write)."""
        size = _nbytes(parts)
        if size > HEAD_FIRST and self._exists(path):
            return  # a HEAD is cheaper than uploading a large body to have it refused
        if self._info is None:
            self._ensure_marker()
        if size > MULTIPART_MIN:
            self._multipart(path, parts)  # one PUT would need the parts joined: a second copy
        else:
            self._put_new(path, parts)

    def _list_pack_files(self) -> dict[str, tuple[int, float | None]]:
        """``packs/`` in one LIST (not s3fs's ``ls``, whose listing cache would hide new packs)."""
        out: dict[str, tuple[int, float | None]] = {}
        for page in self._list(self._packs_dir, delimiter="/"):
            for obj in page.get("Contents", ()):
                modified = obj.get("LastModified")
                mtime = modified.timestamp() if hasattr(modified, "timestamp") else None
                out[obj["Key"].rpartition("/")[2]] = (int(obj.get("Size") or 0), mtime)
        return out

    def _iter_loose_calls(self, function_id: str | None) -> Iterator[tuple[str, str]]:
        """Every record in one recursive listing of ``calls/`` (or of one function's records)."""
        if function_id is not None:
            yield from super()._iter_loose_calls(function_id)
            return
        for rel in self._list_keys(self._calls):
            fid, _, rest = rel.partition("/")  # "<function id>/ab/<30 hex>"
            digest = rest[:2] + rest[3:]
            if len(rest) == 33 and rest[2] == "/" and is_function_id(fid) and is_oid(digest):
                yield fid, digest
