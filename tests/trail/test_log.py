"""The hash-chained trail file: intact logs verify; every kind of tampering is caught."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from meshpacs.errors import TrailBroken
from meshpacs.trail.log import (
    GENESIS,
    HEAD_FILE,
    LOG_FILE,
    MAX_MESSAGE_BYTES,
    Entry,
    TrailLog,
    encode_entry,
    read_entries,
    verify,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def message(i: int) -> bytes:
    return f"<AuditMessage><n>{i}</n></AuditMessage>".encode()


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    directory = tmp_path / "trail"
    log = TrailLog(directory, KEY)
    for i in range(1, 6):
        assert log.append(message(i)).sequence == i
    return directory


def entries(directory: Path) -> list[Entry]:
    return list(read_entries(directory, KEY))


def log_bytes(directory: Path) -> bytes:
    return (directory / LOG_FILE).read_bytes()


def rewrite(directory: Path, data: bytes) -> None:
    (directory / LOG_FILE).write_bytes(data)


def test_an_intact_trail_verifies_and_reads_back_in_order(trail: Path) -> None:
    report = verify(trail, KEY)
    assert report.ok, report
    assert (report.entries, report.signed_entries, report.first_bad) == (5, 5, None)
    assert report.notes == ()
    assert [e.message for e in entries(trail)] == [message(i) for i in range(1, 6)]
    assert entries(trail)[0].previous == GENESIS
    assert report.first_time_us is not None and report.last_time_us is not None
    assert report.first_time_us <= report.last_time_us
    assert (trail / LOG_FILE).stat().st_mode & 0o777 == 0o600
    assert (trail / HEAD_FILE).stat().st_mode & 0o777 == 0o600


def test_the_wrong_key_does_not_verify(trail: Path) -> None:
    report = verify(trail, OTHER_KEY)
    assert not report.ok and "head file's seal" in (report.problem or "")


@pytest.mark.parametrize("where", ["message", "time", "chain", "seal"])
def test_a_flipped_byte_names_its_entry(trail: Path, where: str) -> None:
    third = entries(trail)[2]
    offset = {
        "message": third.offset + 53 + 5,
        "time": third.offset + 12,
        "chain": third.end - 64 + 3,
        "seal": third.end - 1,
    }[where]
    data = bytearray(log_bytes(trail))
    data[offset] ^= 0x01
    rewrite(trail, bytes(data))
    report = verify(trail, KEY)
    assert not report.ok
    assert report.first_bad == 3 and report.entries == 2, report
    assert ("seal" if where == "seal" else "chain hash") in (report.problem or "")


def test_a_flipped_byte_in_the_head_is_caught(trail: Path) -> None:
    head = bytearray((trail / HEAD_FILE).read_bytes())
    head[5] ^= 0x80
    (trail / HEAD_FILE).write_bytes(bytes(head))
    report = verify(trail, KEY)
    assert not report.ok and "head file's seal does not verify" in (report.problem or "")


def test_a_deleted_middle_entry_is_caught(trail: Path) -> None:
    third = entries(trail)[2]
    data = log_bytes(trail)
    rewrite(trail, data[: third.offset] + data[third.end :])
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 3
    assert "sequence number 4 where 3 was expected" in (report.problem or "")


def test_a_swapped_pair_is_caught(trail: Path) -> None:
    second, third = entries(trail)[1:3]
    data = log_bytes(trail)
    swapped = (
        data[: second.offset]
        + data[third.offset : third.end]
        + data[second.offset : second.end]
        + data[third.end :]
    )
    rewrite(trail, swapped)
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 2 and report.entries == 1


def test_an_entry_copied_in_again_is_caught(trail: Path) -> None:
    second = entries(trail)[1]
    data = log_bytes(trail)
    rewrite(trail, data[: second.end] + data[second.offset : second.end] + data[second.end :])
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 3


def test_the_last_entry_removed_is_caught(trail: Path) -> None:
    last = entries(trail)[-1]
    rewrite(trail, log_bytes(trail)[: last.offset])
    report = verify(trail, KEY)
    assert not report.ok and report.entries == 4 and report.first_bad == 5
    assert "ends after 4 entries, but its signed head records 5" in (report.problem or "")


def test_half_of_the_last_entry_cut_is_caught(trail: Path) -> None:
    last = entries(trail)[-1]
    rewrite(trail, log_bytes(trail)[: (last.offset + last.end) // 2])
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 5
    assert "and part of another" in (report.problem or "")


def test_an_emptied_log_is_caught(trail: Path) -> None:
    rewrite(trail, b"")
    report = verify(trail, KEY)
    assert not report.ok and "ends after 0 entries" in (report.problem or "")


def test_missing_head_or_log_is_caught(trail: Path) -> None:
    head = (trail / HEAD_FILE).read_bytes()
    (trail / HEAD_FILE).unlink()
    assert "head file atna.head is missing" in (verify(trail, KEY).problem or "")
    (trail / HEAD_FILE).write_bytes(head)
    (trail / LOG_FILE).unlink()
    report = verify(trail, KEY)
    assert not report.ok and "log file atna.log is missing" in (report.problem or "")


def test_an_entry_forged_without_the_key_is_caught(trail: Path) -> None:
    last = entries(trail)[-1]
    forged = encode_entry(OTHER_KEY, 6, last.time_us + 1, last.chain, message(666))
    rewrite(trail, log_bytes(trail) + forged)
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 6 and report.entries == 5
    assert "seal does not verify" in (report.problem or "")
    with pytest.raises(TrailBroken, match="seal"):
        TrailLog(trail, KEY).append(message(7))


def test_a_rewritten_log_with_a_recomputed_chain_is_caught(trail: Path) -> None:
    """Without the key, rewriting an entry and everything after it still fails the seals."""
    forged, previous = b"", GENESIS
    for entry in entries(trail):
        body = message(100) if entry.sequence == 2 else entry.message
        forged += encode_entry(OTHER_KEY, entry.sequence, entry.time_us, previous, body)
        previous = forged[-64:-32]
    rewrite(trail, forged)
    assert not verify(trail, KEY).ok


def test_lengths_are_bounded_before_reading(trail: Path) -> None:
    data = bytearray(log_bytes(trail))
    data[49:53] = (0xFFFFFFFF).to_bytes(4, "big")
    rewrite(trail, bytes(data))
    report = verify(trail, KEY)
    assert not report.ok and report.first_bad == 1 and "outside 1 .." in (report.problem or "")
    with pytest.raises(Exception, match="1 to"):
        TrailLog(trail.parent / "other", KEY).append(b"x" * (MAX_MESSAGE_BYTES + 1))


def test_a_crash_mid_write_leaves_a_note_and_the_next_append_cuts_it(trail: Path) -> None:
    partial = encode_entry(KEY, 6, 1, entries(trail)[-1].chain, message(6))[:40]
    rewrite(trail, log_bytes(trail) + partial)
    report = verify(trail, KEY)
    assert report.ok and report.entries == 5
    assert any("unfinished entry" in note for note in report.notes)
    assert TrailLog(trail, KEY).append(message(6)).sequence == 6
    after = verify(trail, KEY)
    assert after.ok and after.entries == 6 and after.notes == ()


def test_a_crash_before_the_head_update_is_adopted(trail: Path) -> None:
    old_head = (trail / HEAD_FILE).read_bytes()
    TrailLog(trail, KEY).append(message(6))
    (trail / HEAD_FILE).write_bytes(old_head)  # as if the process died before replacing it
    report = verify(trail, KEY)
    assert report.ok and report.entries == 6 and report.signed_entries == 5
    assert any("sealed entries after the head" in note for note in report.notes)
    TrailLog(trail, KEY).append(message(7))
    after = verify(trail, KEY)
    assert after.ok and (after.entries, after.signed_entries, after.notes) == (7, 7, ())


def test_nothing_is_appended_to_a_cut_trail(trail: Path) -> None:
    last = entries(trail)[-1]
    rewrite(trail, log_bytes(trail)[: last.offset])
    before = log_bytes(trail)
    with pytest.raises(TrailBroken, match="cut from the end"):
        TrailLog(trail, KEY).append(message(6))
    assert log_bytes(trail) == before


def test_a_new_trail_starts_with_a_signed_empty_head(tmp_path: Path) -> None:
    directory = tmp_path / "new"
    assert not verify(directory, KEY).ok  # nothing there at all
    log = TrailLog(directory, KEY)
    log.append(message(1))
    assert verify(directory, KEY).ok


def test_threads_and_processes_append_without_losing_or_mixing_entries(tmp_path: Path) -> None:
    directory = tmp_path / "busy"
    log = TrailLog(directory, KEY)

    def worker(n: int) -> None:
        for i in range(10):
            log.append(message(n * 100 + i))

    script = (
        "import sys; from pathlib import Path; from meshpacs.trail.log import TrailLog\n"
        "log = TrailLog(Path(sys.argv[1]), bytes(range(32)))\n"
        "for i in range(10): log.append(b'<AuditMessage>from %d</AuditMessage>' % i)\n"
    )
    others = [
        subprocess.Popen([sys.executable, "-c", script, str(directory)], env=os.environ.copy())
        for _ in range(2)
    ]
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(60) for p in others] == [0, 0]
    report = verify(directory, KEY)
    assert report.ok and report.entries == 50 and report.notes == ()
    assert [e.sequence for e in entries(directory)] == list(range(1, 51))
