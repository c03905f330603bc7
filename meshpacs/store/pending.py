"""A fragment on its way in: streamed to a temporary file, checked, then handed to the store.

The transport feeds chunks as they arrive, so memory holds one chunk, never the fragment.
Two checks run while the bytes stream: no byte past the size declared at
:meth:`~meshpacs.store.store.FragmentStore.begin_put`, and, as soon as the 39-byte header
is in, the size the header implies must equal the declared one (a fragment that lies about
its size is refused before most of it is sent). :meth:`PendingFragment.commit` then
requires exactly the declared size, fsyncs the file, runs
:func:`~meshpacs.erasure.decoder.verify_fragment` over it (header, trailer, share root,
every block hash) and only then asks the store to put it in place.

Any failure, and :meth:`PendingFragment.abort`, removes the temporary file and gives the
quota reservation back: a refused fragment leaves nothing behind. A pending fragment is
fed by one thread at a time (the transport's one stream); it is not shared.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from meshpacs.erasure.decoder import VerifiedFragment, verify_fragment
from meshpacs.erasure.layout import HEADER_SIZE, parse_header
from meshpacs.errors import CorruptFragment, LimitExceeded, QuotaExceeded
from meshpacs.store.durable import write_all
from meshpacs.store.index import StoredFragment

__all__ = ["PendingFragment", "Publish", "Release"]

# Puts a verified, fsynced temp file in place; owns the file from then on, success or not.
Publish = Callable[["PendingFragment", VerifiedFragment], StoredFragment]
# Gives back the quota reserved for a pending fragment (idempotent).
Release = Callable[["PendingFragment"], None]

# A full disk (or a filesystem quota): this node has no room, which the sender must hear as
# a refusal like a partner quota's (and place the share elsewhere), not as a dropped link.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class PendingFragment:
    """A fragment being received for ``owner_site``; exactly ``size`` bytes are expected."""

    def __init__(
        self,
        fragment_id: str,
        owner_site: str,
        size: int,
        fd: int,
        temp_path: Path,
        publish: Publish,
        release: Release,
    ) -> None:
        self.fragment_id = fragment_id
        self.owner_site = owner_site
        self.size = size
        self.temp_path = temp_path
        self._fd = fd
        self._publish = publish
        self._release = release
        self._written = 0
        self._head = bytearray()  # the header's bytes until all 39 are in
        self._open = True

    def __repr__(self) -> str:
        return (
            f"PendingFragment({self.fragment_id[:12]}..., owner={self.owner_site!r},"
            f" {self._written}/{self.size} bytes)"
        )

    @property
    def written(self) -> int:
        return self._written

    @property
    def closed(self) -> bool:
        return not self._open

    def write(self, chunk: bytes | memoryview) -> None:
        """Append ``chunk``; refuses (and aborts) past the declared size or on a bad header."""
        self._check_open()
        try:
            if len(chunk) > self.size - self._written:
                raise LimitExceeded(f"fragment sent past its declared size of {self.size} bytes")
            if len(self._head) < HEADER_SIZE:
                self._take_header(chunk)
            write_all(self._fd, chunk)
            self._written += len(chunk)
        except BaseException as error:
            self.abort()
            _refuse_if_no_room(error)
            raise

    def commit(self, expected_set_hash: bytes | None = None) -> StoredFragment:
        """Verify the whole fragment and put it in place durably; refuses it otherwise.

        With ``expected_set_hash`` (what the owner recorded) the fragment must also belong
        to exactly that encoding. Same owner and same bytes as a fragment already here:
        success, nothing rewritten.
        """
        self._check_open()
        try:
            if self._written != self.size:
                raise CorruptFragment(
                    f"fragment cut short: {self._written} of {self.size} bytes received"
                )
            os.fsync(self._fd)
            self._close_fd()
            with self.temp_path.open("rb") as source:
                verified = verify_fragment(source, expected_set_hash)
        except BaseException as error:
            self.abort()
            _refuse_if_no_room(error)  # fsync is where some filesystems find out
            raise
        # From here the store owns the temp file and the reservation, whatever happens.
        self._open = False
        return self._publish(self, verified)

    def abort(self) -> None:
        """Discard the temporary file and release the reservation (idempotent)."""
        self._open = False
        self._close_fd()
        self.temp_path.unlink(missing_ok=True)
        self._release(self)

    def __enter__(self) -> PendingFragment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._open:
            self.abort()

    def _take_header(self, chunk: bytes | memoryview) -> None:
        self._head += chunk[: HEADER_SIZE - len(self._head)]
        if len(self._head) < HEADER_SIZE:
            return
        header = parse_header(bytes(self._head))
        if header.fragment_size != self.size:
            raise CorruptFragment(
                f"header implies {header.fragment_size} bytes, {self.size} were declared",
                header.share,
            )

    def _check_open(self) -> None:
        if not self._open:
            raise ValueError("this pending fragment was already committed or aborted")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _refuse_if_no_room(error: BaseException) -> None:
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        raise QuotaExceeded(
            f"no room on this node's disk for the fragment: {error.strerror}"
        ) from error
