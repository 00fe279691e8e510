"""Content-addressed blobs in S3-compatible object storage (AWS S3, MinIO, Ceph, SeaweedFS, R2).

Layout: ``<prefix>/sha256/<first two hex>/<full hex>`` in one bucket, the same address scheme as the
local store. A put hashes the file first (its address is its SHA-256), then uploads it with that
SHA-256 sent along, so the server refuses bytes damaged on the way (BadDigest), and only if absent
(``If-None-Match: *``), so concurrent uploads of the same bytes are safe; "already exists" is success.
Files above ``multipart_threshold`` go up in parts, a few in flight at once (memory is bounded by
``max_concurrency`` parts, never the file), and a failed multipart upload is aborted. Every put
returns only once the server acknowledged the object, so the object exists before any event naming
it is appended. Reads stream into a content-addressed cache under ``cache_dir``, checked by SHA-256
before a file is given its name there.

The endpoint, region and credentials come from the standard AWS environment and config files
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...), as every AWS SDK reads them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlsplit

from . import durable
from .base import (BlobCorrupted, BlobInfo, BlobStoreAccessDenied, BlobStoreError, BlobStoreMissing,
                   BlobStoreUnavailable, check_sha, copy_checked, is_sha)

try:  # boto3 is only needed by ledgers whose blobs live in S3
    import boto3
    import botocore.config
    import botocore.exceptions as bce
except ImportError as exc:  # pragma: no cover - exercised only without the dependency
    raise ImportError("blobs in S3 need boto3: pip install 'artifact-ledger[s3]'") from exc

MiB = 1 << 20
CHUNK = MiB
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_MAX_CONCURRENCY = 4
READ_CONCURRENCY = 16  # reads a walk over many objects (verify) keeps in flight
# Bounded waits, so a bad endpoint fails in seconds, never hangs: each attempt waits at most
# connect_timeout for the connection and read_timeout between two packets of an answer.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_MAX_ATTEMPTS = 5  # botocore's "standard" retries: 5xx, throttling, timeouts, with jittered backoff
CACHE_TMP_MAX_AGE = 24 * 3600.0  # seconds before an unowned cache temp file counts as left behind
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (but the last)
MAX_PARTS = 10_000
# Below this size a put skips the existence check: the conditional PUT costs the same round trip.
HEAD_FIRST_BYTES = MiB

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OPTIONS = {"connect_timeout": float, "read_timeout": float, "max_attempts": int, "part_size": int,
            "multipart_threshold": int, "max_concurrency": int}
_UNREACHABLE = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
                bce.ConnectionClosedError, bce.ResponseStreamingError, bce.IncompleteReadError,
                bce.ConnectionError)
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                 "InvalidSecurity", "AllAccessDisabled", "403"}
_DIGEST_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
T = TypeVar("T")


class BlobChecksumRefused(BlobStoreError):
    """The server refused an upload whose bytes did not match the SHA-256 sent with them."""


def parse_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """(bucket, prefix, options) of ``s3://bucket/prefix?option=value&...``; ``ValueError`` naming the problem."""
    if not isinstance(url, str):
        raise TypeError(f"an S3 blob URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"blob store URL {url!r}: the scheme must be s3://, not {parts.scheme + '://'!r}")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"blob store URL {url!r} names no bucket; write s3://bucket/prefix")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"blob store URL {url!r}: {bucket!r} is not a valid bucket name (3 to 63 lowercase "
                         "letters, digits, dots and hyphens, starting and ending with a letter or digit)")
    prefix = parts.path.strip("/")
    if prefix:
        for seg in prefix.split("/"):
            if seg in ("", ".", "..") or any(ord(c) < 32 or c == "\x7f" for c in seg):
                raise ValueError(f"blob store URL {url!r}: the prefix {prefix!r} has an empty, '.', '..' "
                                 "or control-character segment")
    if parts.fragment:
        raise ValueError(f"blob store URL {url!r} has a #fragment; S3 keys are given by the path")
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        kind = _OPTIONS.get(name)
        if kind is None:
            raise ValueError(f"blob store URL {url!r}: unknown option {name!r}; known: {sorted(_OPTIONS)}")
        try:
            options[name] = kind(value)
        except ValueError:
            raise ValueError(f"blob store URL {url!r}: option {name}={value!r} must be "
                             f"{'a number' if kind is float else 'an integer'}") from None
    return bucket, prefix, options


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _code(exc: BaseException) -> str:
    if isinstance(exc, bce.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    if isinstance(exc, bce.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def _absent(exc: BaseException) -> bool:
    """Whether an error says the object (not the bucket) does not exist."""
    return _code(exc) in ("NoSuchKey", "NotFound", "404") and _code(exc) != "NoSuchBucket"


def _exists_already(exc: BaseException) -> bool:
    """Whether a conditional create failed because the object exists (412 Precondition Failed)."""
    return _code(exc) == "PreconditionFailed" or _status(exc) == 412


class S3BlobStore:
    """Blobs in one bucket under one prefix, deduplicated by SHA-256, cached locally on read."""

    def __init__(self, bucket: str, prefix: str = "", *, cache_dir: str | os.PathLike[str],
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, part_size: int = DEFAULT_PART_SIZE,
                 multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY, read_only: bool = False,
                 check: bool = True, client: Any = None):
        for name, value, lo in (("connect_timeout", connect_timeout, 0.0), ("read_timeout", read_timeout, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > lo:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name, ivalue, ilo in (("max_attempts", max_attempts, 1), ("part_size", part_size, MIN_PART_SIZE),
                                  ("multipart_threshold", multipart_threshold, 0),
                                  ("max_concurrency", max_concurrency, 1)):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or ivalue < ilo:
                raise ValueError(f"{name} must be an integer of at least {ilo}, got {ivalue!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._keys = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_size = part_size
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.max_concurrency = max_concurrency
        # Each verify or size is a round trip: a walk over many blobs keeps this many in flight.
        self.read_concurrency = READ_CONCURRENCY
        self.put_concurrency = READ_CONCURRENCY  # each small put waits on its upload's round trip
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_attempts = max_attempts
        self.read_only = read_only
        self.cache_dir = Path(cache_dir).resolve()
        self._cache_objects = self.cache_dir / "sha256"
        self._cache_tmp = self.cache_dir / "tmp"
        self._known: set[str] = set()  # blobs this process saw acknowledged: no second upload
        self._known_lock = threading.Lock()
        self._cache_ready = False
        self.client = client if client is not None else self._new_client()
        self.endpoint = str(self.client.meta.endpoint_url)
        if check:
            self.check()

    @classmethod
    def from_url(cls, url: str, *, cache_dir: str | os.PathLike[str], read_only: bool = False) -> "S3BlobStore":
        """The store a ``s3://bucket/prefix?options`` URL names (options: see ``parse_url``)."""
        bucket, prefix, options = parse_url(url)
        return cls(bucket, prefix, cache_dir=cache_dir, read_only=read_only, **options)

    def _new_client(self) -> Any:
        session = boto3.session.Session()
        config = botocore.config.Config(
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            max_pool_connections=max(10, 2 * self.max_concurrency, READ_CONCURRENCY + 2), tcp_keepalive=True,
            # The store sends its own SHA-256 with every upload; no second checksum is computed.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        try:
            # Without a configured region, SigV4 still needs one; S3-compatible servers accept any.
            return session.client("s3", region_name=session.region_name or "us-east-1", config=config)
        except (bce.BotoCoreError, ValueError) as exc:
            raise BlobStoreError(f"cannot make an S3 client for {self.location}: {exc}") from exc

    # ------------------------------------------------------------ errors
    def _describe(self) -> str:
        return f"{self.location} at endpoint {self.endpoint}"

    def _translate(self, exc: BaseException, doing: str) -> BaseException:
        """An error that names what is wrong, for one failed S3 call."""
        if isinstance(exc, _UNREACHABLE):
            return BlobStoreUnavailable(
                f"the S3 endpoint {self.endpoint} did not answer while {doing} ({exc}); tried {self.max_attempts} "
                f"time(s) with a {self.connect_timeout:g} s connect and {self.read_timeout:g} s read timeout. "
                "Check AWS_ENDPOINT_URL and that the server is up")
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
            return BlobStoreAccessDenied(f"no usable AWS credentials for {self._describe()} ({exc}); set "
                                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        code = _code(exc)
        if code == "NoSuchBucket" or (doing.startswith("checking") and code in ("404", "NotFound")):
            return BlobStoreMissing(f"the bucket {self.bucket!r} does not exist at endpoint {self.endpoint} "
                                    f"(while {doing}); create it, or fix the blobs URL {self.location}")
        if code in _DENIED_CODES:
            return BlobStoreAccessDenied(f"the S3 server refused the credentials or their access to "
                                         f"{self._describe()} while {doing}: {code}: {exc}")
        if code in _DIGEST_CODES:
            return BlobChecksumRefused(f"the S3 server refused the bytes while {doing}: they do not match the "
                                       f"SHA-256 sent with them ({code}); the file changed while it was being "
                                       "stored, or the bytes were damaged on the way; nothing was stored")
        if _status(exc) >= 500 or code in ("SlowDown", "Throttling", "ServiceUnavailable", "RequestTimeout"):
            return BlobStoreUnavailable(f"the S3 server at {self.endpoint} kept failing while {doing} "
                                        f"({code or _status(exc)}, after {self.max_attempts} attempt(s)): {exc}")
        if isinstance(exc, (bce.ClientError, bce.BotoCoreError)):
            return BlobStoreError(f"S3 error while {doing} ({self._describe()}): {exc}")
        return exc

    def _call(self, doing: str, fn: Callable[..., T], /, **kw: Any) -> T:
        """One S3 call; its errors come back translated (``_translate``), absent keys untouched."""
        try:
            return fn(**kw)
        except (bce.ClientError, bce.BotoCoreError) as exc:
            if _absent(exc) and not doing.startswith("checking"):
                raise
            if _exists_already(exc):
                raise
            raise self._translate(exc, doing) from exc

    def check(self) -> None:
        """Reach the bucket once (a one-key listing), so a wrong URL, endpoint or credential fails at open."""
        self._call(f"checking the bucket {self.bucket!r}", self.client.list_objects_v2, Bucket=self.bucket,
                   Prefix=self._keys, MaxKeys=1)

    # ------------------------------------------------------------ addresses
    def key(self, sha256: str) -> str:
        """The object key of a blob."""
        check_sha(sha256)
        return f"{self._keys}{sha256[:2]}/{sha256}"

    def uri(self, sha256: str) -> str:
        """The ``s3://bucket/key`` URI of a blob."""
        return f"s3://{self.bucket}/{self.key(sha256)}"

    def cache_path(self, sha256: str) -> Path:
        """Where a fetched blob is kept in the local cache (whether or not it is there)."""
        check_sha(sha256)
        return self._cache_objects / sha256[:2] / sha256

    def names_blob(self, path: Path, sha256: str) -> bool:
        """Whether ``path`` is this store's cached copy of the blob ``sha256``."""
        return path == self.cache_path(sha256)

    # ------------------------------------------------------------ writes
    def _writable(self) -> None:
        if self.read_only:
            raise BlobStoreError(f"the blob store {self.location} is open read-only; nothing was stored")

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Upload bytes (if absent) and return their address once the server acknowledged them."""
        self._writable()
        digest = hashlib.sha256(data).digest()
        sha = digest.hex()
        if self._seen(sha):
            return BlobInfo(sha, len(data))
        if len(data) > self.multipart_threshold:
            self._put_multipart(lambda off, n: data[off:off + n], sha, len(data), "bytes")
        else:
            self._put_single(data, sha, digest, "bytes")
        self._remember(sha)
        return BlobInfo(sha, len(data))

    def put_file(self, path: str | os.PathLike[str], *, adopt: bool = False) -> BlobInfo:
        """Upload a file's bytes (if absent) once the SHA-256 is known; returns after the server acknowledged
        them. ``adopt`` changes nothing here: the caller's file is never shared with the store."""
        self._writable()
        src = os.fspath(path)
        digest_obj = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                digest_obj.update(chunk)
                size += len(chunk)
        digest = digest_obj.digest()
        sha = digest.hex()
        if self._seen(sha):
            return BlobInfo(sha, size)
        if size > HEAD_FIRST_BYTES and self.exists(sha):
            self._remember(sha)
            return BlobInfo(sha, size)
        if size > self.multipart_threshold:
            fd = os.open(src, os.O_RDONLY)
            try:
                self._put_multipart(lambda off, n: os.pread(fd, n, off), sha, size, src)
            finally:
                os.close(fd)
        else:
            with open(src, "rb") as f:
                self._put_single(f, sha, digest, src)
        self._remember(sha)
        return BlobInfo(sha, size)

    def _seen(self, sha: str) -> bool:
        with self._known_lock:
            return sha in self._known

    def _remember(self, sha: str) -> None:
        with self._known_lock:
            self._known.add(sha)

    def _put_single(self, body: Any, sha: str, digest: bytes, what: str) -> None:
        """One conditional PUT carrying the SHA-256; an object already there is success."""
        try:
            self._call(f"uploading {what} as {self.uri(sha)}", self.client.put_object, Bucket=self.bucket,
                       Key=self.key(sha), Body=body, ChecksumSHA256=_b64(digest), IfNoneMatch="*")
        except bce.ClientError as exc:
            if not _exists_already(exc):
                raise self._translate(exc, f"uploading {what}") from exc
            # Another upload of the same bytes won: the object exists, whole (its SHA-256 was checked).

    def _put_multipart(self, read: Callable[[int, int], bytes], sha: str, size: int, what: str) -> None:
        """Upload in parts, a few at once, re-hashing the whole on the way; abort on any failure."""
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        key = self.key(sha)
        doing = f"uploading {what} as {self.uri(sha)} in parts"
        upload = self._call(doing, self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                            ChecksumAlgorithm="SHA256")
        upload_id = upload["UploadId"]
        whole = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        try:
            with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="s3-part") as pool:
                in_flight: set[Future[dict[str, Any]]] = set()
                for number, offset in enumerate(range(0, size, part_size), start=1):
                    data = read(offset, min(part_size, size - offset))
                    whole.update(data)
                    in_flight.add(pool.submit(self._upload_part, key, upload_id, number, data, doing))
                    del data  # only the in-flight parts stay in memory
                    if len(in_flight) >= self.max_concurrency:
                        # Read the next part as soon as any slot frees (a failed part raises here).
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        parts.extend(f.result() for f in done)
                done, _ = wait(in_flight)
                parts.extend(f.result() for f in done)
            if whole.hexdigest() != sha:
                raise BlobStoreError(f"{what} changed while it was being uploaded (its bytes now hash to "
                                     f"{whole.hexdigest()}, not {sha}); nothing was stored")
            parts.sort(key=lambda p: int(p["PartNumber"]))
            try:
                self._call(doing, self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*")
            except bce.ClientError as exc:
                if not _exists_already(exc):
                    raise self._translate(exc, doing) from exc
                self._abort(key, upload_id)  # the same bytes are there already: these parts are not needed
        except BaseException as exc:
            self._abort(key, upload_id, exc)
            raise

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes, doing: str) -> dict[str, Any]:
        """Upload one part with its own SHA-256 (the server refuses a damaged part)."""
        checksum = _b64(hashlib.sha256(data).digest())
        answer = self._call(doing, self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id,
                            PartNumber=number, Body=data, ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def _abort(self, key: str, upload_id: str, cause: BaseException | None = None) -> None:
        """Abort a multipart upload so its parts cost nothing; a failure to abort is noted on ``cause``."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the server may be the very thing that failed
            if cause is not None:
                cause.add_note(f"aborting the incomplete multipart upload {upload_id} of {key} failed too ({exc}); "
                               "a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes its parts")

    def make_durable(self) -> None:
        """Nothing to flush: every put returned only after the server acknowledged its object."""

    # ------------------------------------------------------------ reads
    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self._call(f"looking up {self.uri(sha256)}", self.client.head_object,
                                                Bucket=self.bucket, Key=self.key(sha256))
            return answer
        except bce.ClientError as exc:
            if _absent(exc):
                return None
            raise self._translate(exc, f"looking up {self.uri(sha256)}") from exc

    def exists(self, sha256: str) -> bool:
        """Whether the object is in the bucket (a HEAD request)."""
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        """The object's size; ``FileNotFoundError`` if absent."""
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self._describe()}")
        return int(head["ContentLength"])

    def one_flush_side(self) -> None:
        """None: no syncfs of the log's filesystem can flush objects on a server."""
        return None

    def blob_stat(self, sha256: str) -> tuple[int, float]:
        """(size, the server's last-modified time) of the object; ``FileNotFoundError`` if absent."""
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(f"blob {sha256} is missing from the store at {self._describe()}")
        return int(head["ContentLength"]), float(head["LastModified"].timestamp())

    def _stream(self, sha256: str, sink: Callable[[bytes], object]) -> str:
        """Feed the object's bytes to ``sink``; returns their SHA-256. ``FileNotFoundError`` if absent."""
        doing = f"downloading {self.uri(sha256)}"
        try:
            answer = self._call(doing, self.client.get_object, Bucket=self.bucket, Key=self.key(sha256))
        except bce.ClientError as exc:
            if _absent(exc):
                raise FileNotFoundError(f"blob {sha256} is missing from the store at {self._describe()}") from None
            raise self._translate(exc, doing) from exc
        digest = hashlib.sha256()
        body = answer["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
                sink(chunk)
        except _UNREACHABLE as exc:
            raise self._translate(exc, doing) from exc
        finally:
            body.close()
        return digest.hexdigest()

    def _fetch(self, sha256: str) -> Path:
        """The cached copy of a blob, downloaded and checked first if it is not cached yet."""
        final = self.cache_path(sha256)
        if final.is_file():
            return final
        # Made on first use: opening a store (and so a ledger that may not be created) writes nothing.
        if not self._cache_ready:
            self._cache_tmp.mkdir(parents=True, exist_ok=True)
            self._sweep_cache()
            self._cache_ready = True
        last: BaseException | None = None
        for _ in range(self.max_attempts):  # a stream cut mid-body is not retried by botocore itself
            tmp = self._cache_tmp / f"{durable.owner_tag()}.{durable.unique_hex()}.part"
            try:
                with open(tmp, "xb") as out:
                    actual = self._stream(sha256, out.write)
                    out.flush()
                    os.fsync(out.fileno())  # the cache name must always mean complete bytes
                if actual != sha256:
                    raise BlobCorrupted(sha256, self.uri(sha256), actual)
                os.chmod(tmp, 0o444)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                return final
            except BlobStoreUnavailable as exc:
                last = exc
            finally:
                tmp.unlink(missing_ok=True)
        assert last is not None
        raise last

    def _sweep_cache(self) -> None:
        """Remove the cache's temp files whose owner is provably gone (or that are a day old, owner unknown)."""
        for name in os.listdir(self._cache_tmp):
            path = os.path.join(self._cache_tmp, name)
            if name.endswith(".part") and durable.is_stale(path, CACHE_TMP_MAX_AGE):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # another process swept it first

    def _from_cache(self, sha256: str, use: Callable[[Path], T]) -> T:
        """Run ``use`` on the cached copy; a cached copy found damaged is dropped and fetched again once."""
        for attempt in (0, 1):
            path = self._fetch(sha256)
            try:
                return use(path)
            except BlobCorrupted:
                path.unlink(missing_ok=True)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def read_bytes(self, sha256: str) -> bytes:
        """A blob's bytes (through the cache), checked against its SHA-256."""

        def read(path: Path) -> bytes:
            data = path.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise BlobCorrupted(sha256, str(path), actual)
            return data

        return self._from_cache(sha256, read)

    def copy_to(self, sha256: str, dest: str | os.PathLike[str]) -> None:
        """Stream a blob (through the cache) into the new file ``dest``, checking its SHA-256 on the way."""

        def copy(path: Path) -> None:
            with open(path, "rb") as src:
                copy_checked(src, str(path), dest, sha256)

        self._from_cache(sha256, copy)

    def local_file(self, sha256: str) -> Path:
        """The cached copy of a blob (fetched and checked by SHA-256 first if needed); never write to it."""
        return self._fetch(sha256)

    def verify(self, sha256: str) -> bool:
        """Whether the object in the bucket (never the cache) still hashes to ``sha256``."""
        return self._stream(sha256, lambda chunk: None) == sha256

    def iter_blobs(self) -> Iterator[str]:
        """Every blob's SHA-256 under the prefix, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._keys):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self._keys):]
                    shard, _, sha = name.partition("/")
                    if is_sha(sha) and shard == sha[:2]:
                        yield sha
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._translate(exc, f"listing {self.location}") from exc

    def delete(self, sha256: str) -> bool:
        """Remove the object (and its cached copy); returns whether it was there."""
        self._writable()
        existed = self.exists(sha256)
        if existed:
            self._call(f"deleting {self.uri(sha256)}", self.client.delete_object, Bucket=self.bucket,
                       Key=self.key(sha256))
        with self._known_lock:
            self._known.discard(sha256)
        self.cache_path(sha256).unlink(missing_ok=True)
        return existed

    def close(self) -> None:
        """Close the client's connections (puts never leave anything pending)."""
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
