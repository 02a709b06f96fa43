"""Partitions on the local bus: a stable hash of the partition key, fixed at publish, so N
receivers asking for "k of N" share a topic and each key's messages reach one of them in order;
and a bus file written before partitions existed migrates with every message kept."""

from __future__ import annotations

import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from common.sqlite_schema import user_version
from runtime.bus import BUS_SCHEMA, PARTITIONS, LocalBus, partition_of

MAIN_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "bus_v1" / "bus.db"


def test_the_partition_is_a_stable_hash_of_the_key() -> None:
    # CRC-32 of the UTF-8 key: the same in every process and release (Python's hash() is salted).
    assert partition_of("dev-1") == 0x87E06F96 % PARTITIONS == partition_of("dev-1")
    assert len({partition_of(f"dev-{i}") for i in range(500)}) == PARTITIONS


def test_receivers_of_k_of_n_share_a_topic_each_key_in_order_on_one(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus.db")
    for rnd in range(5):
        bus.publish_many("t", [(f"{d}:{rnd}".encode(), None, f"dev-{d}", None) for d in range(40)])
    bus.publish_many("t", [(b"keyless", f"id-{i}", None, None) for i in range(10)])
    got: dict[int, list[str]] = defaultdict(list)
    while True:
        leases = [(k, x) for k in range(2) for x in bus.receive("t", max_messages=7, partitions=(k, 2))]
        if not leases:
            break
        for k, lease in leases:
            got[k].append(lease.body.decode())
        bus.ack([x for _, x in leases])
    assert sorted(got[0] + got[1]) == sorted([f"{d}:{r}" for d in range(40) for r in range(5)] + ["keyless"] * 10)
    assert got[0] and got[1]  # both receivers had work
    for k, bodies in got.items():
        by_device: dict[str, list[int]] = defaultdict(list)
        for body in bodies:
            if body != "keyless":
                device, rnd = body.split(":")
                by_device[device].append(int(rnd))
                assert partition_of(f"dev-{device}") % 2 == k  # the key decided the receiver
        assert all(rounds == sorted(rounds) for rounds in by_device.values())  # in order per key


def test_releasing_one_receivers_partitions_leaves_the_others_leases(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus.db")
    bus.publish_many("t", [(b"x", None, f"dev-{d}", None) for d in range(20)])
    mine = bus.receive("t", partitions=(0, 2))
    theirs = bus.receive("t", partitions=(1, 2))
    assert mine and theirs
    assert bus.release_all_leases(partitions=(0, 2)) == len(mine)
    assert bus.receive("t", partitions=(1, 2)) == []  # still leased
    assert {x.seq for x in bus.receive("t", partitions=(0, 2))} == {x.seq for x in mine}
    assert bus.ack(theirs) == len(theirs)  # their leases were untouched


def test_a_partition_request_out_of_range_is_refused(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus.db")
    with pytest.raises(ValueError, match="partitions 2 of 2"):
        bus.receive("t", partitions=(2, 2))


def test_a_bus_file_written_by_the_previous_release_migrates_keeping_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    shutil.copy(MAIN_FILE, path)
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == 1
    bus = LocalBus(path)
    assert user_version(bus._conn()) == BUS_SCHEMA.version == 2
    assert bus.pending() == 21
    bus.release_all_leases()  # three were leased when the file was written
    by_key = {x.partition_key or x.msg_id: x for x in bus.receive("eh:device-messages", max_messages=100)}
    assert len(by_key) == 20
    rows = dict(bus._conn().execute("SELECT coalesce(partition_key, msg_id), partition_no FROM messages"))
    assert rows == {key: partition_of(key) for key in [*by_key, "no-key"]}  # computed for the old rows
    # Each old message is received by the worker its key maps to.
    for k in range(2):
        bus.release_all_leases()
        leases = bus.receive("eh:device-messages", partitions=(k, 2))
        assert {x.partition_key for x in leases} == {key for key in by_key if partition_of(key) % 2 == k}
