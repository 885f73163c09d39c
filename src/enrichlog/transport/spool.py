"""`Spool`: the on-disk overflow of a producer whose broker is down or slow.

Events that do not fit in memory are appended to segment files; the
publisher reads them back from the oldest, in order, once the broker
answers, and deletes each segment it has published. The spool is capped in
bytes: an event that would pass the cap is refused (the caller counts it).

One process owns a spool at a time: the directory holds *slots*
(``slot-0``, ``slot-1``...), each locked with ``flock`` by the process using
it, so the workers of a pre-forking server each take their own. A process
that opens a spool takes over what every process no longer running left in
the directory (the slots it can lock): fewer processes than before, say
after an outage that made each forked worker spool in its own slot, still
publish everything.

A record is one line, ``<event id> TAB <JSON> LF``: the JSON never holds a
raw line feed, and a line cut short by a crash (no ``LF``) is dropped when
the slot is opened again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import urllib.parse
from pathlib import Path
from typing import IO

__all__ = ["Record", "Spool", "SpoolWriteError", "spool_folder"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per directory
    fcntl = None  # type: ignore[assignment]


def spool_folder(subject: str) -> str:
    """The folder of ``subject``'s spool, inside ``spool_dir``: the subject
    itself, with ``/`` (which a path would read) and whatever is not plain
    ASCII percent-encoded. (A subject ``/tmp/x`` put the spool at
    ``/tmp/x``, outside ``spool_dir``; ``a/b`` nested in ``a``'s.)"""
    return urllib.parse.quote(subject, safe=".-_")


#: An event ready to publish: its id (the ``Nats-Msg-Id``) and its JSON.
Record = tuple[str, bytes]

#: Slots tried before a spool gives up (processes sharing one directory).
_MAX_SLOTS = 256
_SEGMENT_SUFFIX = ".spool"
# Segment numbers start high so that a segment can be put before the first.
_FIRST_SEGMENT = 10**12


class SpoolWriteError(OSError):
    """A write to the spool failed after ``stored`` of its records were
    written whole (a disk that filled up midway): those are in the spool,
    the others are not, and no part of them is left on disk."""

    def __init__(self, exc: OSError, stored: int) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.stored = stored


class Spool:
    """Segment files in a locked slot of ``directory``, capped at
    ``max_bytes``. Not thread-safe: its owner holds a lock around every call.

    Args:
        directory: where the slots live (created if missing).
        max_bytes: the cap on the bytes of unpublished records.
        segment_bytes: a segment is closed and a new one started past this.

    Raises:
        OSError: the directory cannot be created or no slot can be locked.
    """

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, *, segment_bytes: int = 4 << 20
    ) -> None:
        self.max_bytes = max_bytes
        self._segment_bytes = max(1024, min(segment_bytes, max_bytes // 4 or 1024))
        root = Path(directory).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.path, self._lock_file = _take_slot(root)
        self._segments: list[int] = []  # numbers, oldest first
        self._head_offset = 0  # bytes of the oldest segment already published
        self._sizes: dict[int, int] = {}
        self._writer: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self._reader_segment = -1
        self._load()
        self._adopt_orphans(root)

    # -- state on disk ---------------------------------------------------------

    def _segment_path(self, number: int) -> Path:
        return _segment_file(self.path, number)

    def _load(self) -> None:
        head_segment, head_offset = _read_head(self.path)
        for number in _segment_numbers(self.path):
            path = self._segment_path(number)
            if number < head_segment:  # published before the process ended
                path.unlink(missing_ok=True)
                continue
            size = _drop_partial_line(path)
            self._segments.append(number)
            self._sizes[number] = size
        if self._segments and self._segments[0] == head_segment:
            self._head_offset = min(head_offset, self._sizes[head_segment])
        self._drop_published_segments()

    def _adopt_orphans(self, root: Path) -> None:
        """Move in the unpublished records of the other slots no process
        holds: their owners ended (a pre-forking server's workers that
        spooled during an outage, then fewer of them started again)."""
        if fcntl is None:  # pragma: no cover - no locks: no way to tell
            return
        for slot in sorted(root.glob("slot-*")):
            if slot == self.path or not slot.is_dir():
                continue
            lock = _lock(slot)
            if lock is None:  # a running process's
                continue
            try:
                self._adopt(slot)
            finally:
                lock.close()

    def _adopt(self, slot: Path) -> None:
        """Append ``slot``'s unpublished segments after this spool's own;
        each is in one slot or the other at any moment (a crash halfway
        leaves at most one segment in both: its events have ids, which the
        broker deduplicates)."""
        head_segment, head_offset = _read_head(slot)
        moved = False
        for number in _segment_numbers(slot):
            path = _segment_file(slot, number)
            if number < head_segment:  # published before its owner ended
                path.unlink(missing_ok=True)
                continue
            size = _drop_partial_line(path)
            offset = min(head_offset, size) if number == head_segment else 0
            if offset < size:
                mine = self._segments[-1] + 1 if self._segments else _FIRST_SEGMENT
                target = self._segment_path(mine)
                if offset:
                    with path.open("rb") as source:
                        source.seek(offset)
                        target.write_bytes(source.read())
                    path.unlink()
                else:
                    os.replace(path, target)
                self._segments.append(mine)
                self._sizes[mine] = size - offset
                moved = True
            else:
                path.unlink(missing_ok=True)
        (slot / "head").unlink(missing_ok=True)
        if moved:
            self._write_head()

    def _write_head(self) -> None:
        segment = self._segments[0] if self._segments else 0
        (self.path / "head").write_text(f"{segment} {self._head_offset}\n")

    # -- views -------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of records not yet published."""
        return sum(self._sizes.values()) - self._head_offset

    @property
    def empty(self) -> bool:
        """Whether every record was published."""
        return self.size <= 0

    def count_records(self) -> int:
        """How many records are not yet published (reads the files)."""
        count = 0
        for index, number in enumerate(self._segments):
            with self._segment_path(number).open("rb") as handle:
                if index == 0:
                    handle.seek(self._head_offset)
                while chunk := handle.read(1 << 20):
                    count += chunk.count(b"\n")
        return count

    # -- writing -----------------------------------------------------------------

    def append(self, records: list[Record]) -> int:
        """Append ``records`` in order; return how many fit under the cap
        (the first ones: the rest are refused).

        Raises:
            SpoolWriteError: the disk refused the write (full): its
                ``stored`` records, the first ones, were written whole; the
                part of a record it took is cut off again, so that no
                record is counted lost and published all the same, and no
                later record is glued to a broken one.
        """
        used = self.size
        lines: list[bytes] = []
        for event_id, payload in records:
            line = b"%s\t%s\n" % (event_id.encode("ascii", "replace"), payload)
            if used + len(line) > self.max_bytes:
                break
            used += len(line)
            lines.append(line)
        if not lines:
            return 0
        try:
            writer = self._tail_writer()
        except OSError as exc:
            raise SpoolWriteError(exc, 0) from exc
        tail = self._segments[-1]
        data = b"".join(lines)
        done, failure = _write_all(writer, data)
        if failure is not None:
            whole = data.rfind(b"\n", 0, done) + 1  # the records written whole
            with contextlib.suppress(OSError):
                os.ftruncate(writer.fileno(), self._sizes[tail] + whole)
                done = whole
            self._sizes[tail] += done
            self._close_writer()  # the next write starts after what is kept
            raise SpoolWriteError(failure, data.count(b"\n", 0, whole)) from failure
        self._sizes[tail] += len(data)
        if self._sizes[tail] >= self._segment_bytes:
            self._close_writer()
        return len(lines)

    def prepend(self, records: list[Record]) -> None:
        """Put ``records`` before everything spooled (events taken for
        publishing that must stay the oldest). Not capped: they were
        accepted already."""
        if not records:
            return
        if self.empty:
            self.append(records)
            return
        number = self._segments[0] - 1 if self._segments else _FIRST_SEGMENT
        if self._head_offset:  # the head's published part must not come back
            self._rewrite_head_segment()
            number = self._segments[0] - 1
        data = b"".join(b"%s\t%s\n" % (i.encode("ascii", "replace"), p) for i, p in records)
        path = self._segment_path(number)
        try:
            path.write_bytes(data)
        except OSError:
            # All or nothing: a part of them left behind would be published
            # by the next start while counted lost here.
            path.unlink(missing_ok=True)
            raise
        self._segments.insert(0, number)
        self._sizes[number] = len(data)
        try:
            self._write_head()
        except OSError:
            self._segments.pop(0)
            del self._sizes[number]
            path.unlink(missing_ok=True)
            raise

    def _rewrite_head_segment(self) -> None:
        head = self._segments[0]
        path = self._segment_path(head)
        with path.open("rb") as source:
            source.seek(self._head_offset)
            rest = source.read()
        self._close_reader()
        if self._writer is not None and head == self._segments[-1]:
            self._close_writer()
        # Written beside it first: a disk that fills up midway leaves the
        # segment as it was (an unpublished record is never cut).
        fresh = path.with_name(path.name + ".new")
        try:
            fresh.write_bytes(rest)
            os.replace(fresh, path)
        except OSError:
            fresh.unlink(missing_ok=True)
            raise
        self._sizes[head] = len(rest)
        self._head_offset = 0
        self._write_head()

    def _tail_writer(self) -> IO[bytes]:
        """The tail segment, open for appending without a buffer: what a
        write took is on disk, so a failed one can be cut back exactly."""
        if self._writer is None:
            segments = self._segments
            new = not segments or self._sizes[segments[-1]] >= self._segment_bytes
            number = (segments[-1] + 1 if segments else _FIRST_SEGMENT) if new else segments[-1]
            # Opened before it is listed: a segment that cannot be opened is none.
            writer = self._segment_path(number).open("ab", buffering=0)
            if new:
                segments.append(number)
                self._sizes[number] = 0
            self._writer = writer
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None

    # -- reading -----------------------------------------------------------------

    def peek(self, limit: int) -> list[Record]:
        """Up to ``limit`` of the oldest records, left in place until
        :meth:`consume`."""
        records: list[Record] = []
        if self.empty:
            return records
        head = self._segments[0]
        if self._reader_segment != head or self._reader is None:
            self._close_reader()
            self._reader = self._segment_path(head).open("rb")
            self._reader_segment = head
        if self._writer is not None:
            self._writer.flush()
        self._reader.seek(self._head_offset)
        for line in self._reader:
            if not line.endswith(b"\n"):
                break  # being written: next time
            event_id, _, payload = line[:-1].partition(b"\t")
            records.append((event_id.decode("ascii", "replace"), payload))
            if len(records) >= limit:
                break
        return records

    def consume(self, records: list[Record]) -> None:
        """Forget ``records``, the oldest ones :meth:`peek` returned: they
        are published."""
        self._head_offset += sum(len(i) + len(p) + 2 for i, p in records)
        self._drop_published_segments()
        self._write_head()

    def _drop_published_segments(self) -> None:
        while self._segments and self._head_offset >= self._sizes[self._segments[0]]:
            head = self._segments[0]
            if head == self._segments[-1] and self._writer is not None:
                self._close_writer()
            if self._reader_segment == head:
                self._close_reader()
            self._segment_path(head).unlink(missing_ok=True)
            self._segments.pop(0)
            del self._sizes[head]
            self._head_offset = 0

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
            self._reader = None
            self._reader_segment = -1

    def close(self) -> None:
        """Close the files and release the slot (its records stay on disk)."""
        self._close_writer()
        self._close_reader()
        with contextlib.suppress(OSError):
            self._lock_file.close()

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's files. The slot stays
        locked by the parent (a lock lives as long as any process holds it)
        and its contents stay the parent's to publish."""
        self.close()


def _write_all(writer: IO[bytes], data: bytes) -> tuple[int, OSError | None]:
    """Write ``data`` to an unbuffered file, again for what a write left
    over; how many bytes it took, and the failure, if any."""
    done = 0
    try:
        while done < len(data):
            taken = writer.write(memoryview(data)[done:])
            if not taken:  # nothing taken, and no error: the same as one
                return done, OSError(errno.EIO, "the spool took only part of a write")
            done += taken
    except OSError as exc:
        return done, exc
    return done, None


def _take_slot(root: Path) -> tuple[Path, IO[bytes]]:
    """The first slot of ``root`` this process can lock, with its lock."""
    for index in range(_MAX_SLOTS):
        path = root / f"slot-{index}"
        path.mkdir(exist_ok=True)
        lock = _lock(path)
        if lock is not None:
            return path, lock
    raise OSError(f"every spool slot of {root} is locked by another process")


def _lock(slot: Path) -> IO[bytes] | None:
    """``slot``'s lock, held until the file is closed; None when another
    open file (another process, or another spool of this one) holds it."""
    lock = (slot / "lock").open("ab")
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def _read_head(slot: Path) -> tuple[int, int]:
    """Where publishing stopped in ``slot``: a segment and an offset in it."""
    try:
        segment, offset = (slot / "head").read_text().split()
        return int(segment), int(offset)
    except (OSError, ValueError):
        return 0, 0


def _segment_file(slot: Path, number: int) -> Path:
    return slot / f"{number:020d}{_SEGMENT_SUFFIX}"


def _segment_numbers(slot: Path) -> list[int]:
    """The numbers of ``slot``'s segment files, oldest first."""
    return sorted(
        int(p.name.removesuffix(_SEGMENT_SUFFIX))
        for p in slot.glob(f"*{_SEGMENT_SUFFIX}")
        if p.name.removesuffix(_SEGMENT_SUFFIX).isdigit()
    )


def _drop_partial_line(path: Path) -> int:
    """Cut a record the previous owner left half-written; the file's size."""
    size = path.stat().st_size
    if not size:
        return 0
    with path.open("rb+") as handle:
        handle.seek(max(0, size - 65536))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return size
        cut = tail.rfind(b"\n")
        if cut < 0 and size > len(tail):
            return size  # one record longer than the window: leave it whole
        keep = size - len(tail) + cut + 1
        handle.truncate(keep)
        return keep
