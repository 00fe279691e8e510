"""The blob store contract: bytes keyed by their SHA-256."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the store knows of one blob after a put."""

    sha256: str
    size: int
    linked: bool = False  # the blob shares the caller's inode (put_file with adopt=True)


class BlobStore(Protocol):
    """Content-addressed blob storage; every method is blocking (run it in a thread)."""

    def put_file(self, path: str, *, adopt: bool = False) -> BlobInfo:
        """Store a file's bytes; with ``adopt`` the store may share the file's inode (``BlobInfo.linked``)."""
        ...

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store bytes."""
        ...

    def make_durable(self) -> None:
        """Flush and publish everything put so far; called before any event naming it is written.

        Raises if any flush fails, and then publishes none of the failed blobs.
        """
        ...

    def read_bytes(self, sha256: str) -> bytes:
        """Return a blob's bytes, checked against its SHA-256; ``FileNotFoundError`` if absent."""
        ...

    def copy_to(self, sha256: str, dest: str) -> None:
        """Stream a blob into the new file ``dest``, checking its SHA-256 on the way."""
        ...

    def close(self) -> None:
        """Release what puts never made durable hold (their temp files are removed)."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""
        ...

    def uri(self, sha256: str) -> str:
        """A URI users can open to read the blob."""
        ...

    def iter_blobs(self) -> Iterator[str]:
        """Every stored blob's SHA-256."""
        ...

    def verify(self, sha256: str) -> bool:
        """Whether the stored bytes still hash to ``sha256``."""
        ...

    def delete(self, sha256: str) -> None:
        """Remove a blob durably (absent already: nothing to do); only gc calls it, under the log lock."""
        ...
