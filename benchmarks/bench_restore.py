"""State restore speed and the memory the restored state takes, for sizing a merge replica.

A merge replica holds every customer of its state partitions in memory and, when it is assigned a
partition (start-up, failover, scale-out), reads that partition of the compacted state topic before
merging anything for those customers. This prints what that costs:

- restore: the real `Restorer` loading every state partition into a `MemoryStore`, in state records/s,
  against a plain read_committed consumer reading the same records in the same run (the ceiling:
  what reading the topic costs without decoding anything);
- memory: the growth of the process's resident set and of Python's allocations (tracemalloc, in a
  second restore) per customer held, against the encoded state (the record values) per customer.

The state topic is written by the real merge stage from a generated workload (as `bench_merge.py`),
so it holds what production state holds: every customer's rows, positions, markers, fingerprints.

    python benchmarks/bench_restore.py [--customers 50000] [--events-per-customer 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from statistics import median

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_merge import create, merge_run

from connector.kafka.topics import internal_topics
from connector.state.recovery import Restorer
from connector.state.store import MemoryStore
from tests.integration.merge_support import merge_settings, produce_workload
from tests.workload import generate


def rss_bytes() -> int:
    """The process's resident set now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plain_read(bootstrap: str, topic: str, partitions: int) -> tuple[float, int, int]:
    """Records/s of reading `topic` to its end (read_committed); also the records and value bytes."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-restore-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 52428800,  # as the Restorer's consumer
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    records = size = 0
    open_partitions = set(range(partitions))
    started = time.perf_counter()
    while open_partitions:
        for msg in consumer.consume(5000, 0.05):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(msg.partition())
                continue
            value = msg.value()
            records += 1
            size += len(value) if value is not None else 0
    elapsed = time.perf_counter() - started
    consumer.close()
    return records / elapsed, records, size


def restore(settings, partitions: int) -> tuple[float, int, MemoryStore]:
    """Records/s of the merge stage's restore of every state partition; also the records read."""
    store = MemoryStore()
    restorer = Restorer(settings, store)
    started = time.perf_counter()
    restorer.begin(list(range(partitions)))
    while restorer.pending:
        restorer.step()
    elapsed = time.perf_counter() - started
    restorer.close()
    return restorer.records / elapsed, restorer.records, store


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--events-per-customer", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="read/restore pairs; medians reported")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    run = uuid.uuid4().hex[:8]
    settings = merge_settings(bootstrap, lambda p: f"bench-restore-{p}-{run}", partitions=args.partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create(admin, settings.source.customers.topic, args.partitions)
    create(admin, settings.source.children[0].topic, args.partitions)
    workload = generate(
        seed=3,
        customers=args.customers,
        events=args.customers * args.events_per_customer,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
        replay_probability=0.0,
    )
    total = sum(produce_workload(bootstrap, workload).values())
    del workload
    gc.collect()
    rate, stats = merge_run(settings, total)
    print(f"state written by the merge stage: {total} events at {rate:.0f} ev/s ({stats.commits} commits)")

    reads: list[float] = []
    restores: list[float] = []
    customers = records = value_bytes = 0
    for round_ in range(args.rounds):
        read_rate, records, value_bytes = plain_read(bootstrap, settings.state.topic, args.partitions)
        gc.collect()
        before = rss_bytes()
        restore_rate, restored, store = restore(settings, args.partitions)
        gc.collect()
        grown = rss_bytes() - before
        customers = store.size()
        if restored != records:
            raise SystemExit(f"the restore read {restored} records, the plain read {records}")
        reads.append(read_rate)
        restores.append(restore_rate)
        print(
            f"round {round_ + 1}: plain read {read_rate:8.0f} records/s, restore {restore_rate:8.0f} "
            f"records/s, ratio {restore_rate / read_rate:.2f}; resident set +{grown / customers:.0f} B "
            f"per customer held"
        )
        del store
        gc.collect()

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _, _, store = restore(settings, args.partitions)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del store

    ratios = [r / c for r, c in zip(restores, reads, strict=True)]
    print(f"state topic: {records} records ({customers} customers held after the restore)")
    print(f"plain read  median {median(reads):9.0f} records/s  ({min(reads):.0f}-{max(reads):.0f})")
    print(f"restore     median {median(restores):9.0f} records/s  ({min(restores):.0f}-{max(restores):.0f})")
    print(f"ratio restore/read: median {median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    print(
        f"a million state records restore in ~{1e6 / median(restores):.0f} s on one replica "
        "(one core; the restore runs between the stage's polls)"
    )
    print(
        f"memory per customer held: {traced / customers:.0f} B of Python objects (tracemalloc); "
        f"encoded state {value_bytes / records:.0f} B per record (JSON, before zstd)"
    )
    admin.delete_topics([*settings.source.topics, *(spec.name for spec in internal_topics(settings))])


if __name__ == "__main__":
    main()
