"""Merge-stage throughput with exactly-once, against the raw ceiling measured in the same run.

Ceiling: a plain transactional copy (consume the source topics -> produce the same bytes -> send the
offsets to the transaction -> commit every `commit_interval_ms`), the least any EOS stage must do.
Merge: the real merge stage (decode -> route to the changes topic -> merge -> map -> state + upserts),
from the same input, same commit interval. Both on the local broker (KAFKA_BOOTSTRAP_SERVERS,
default 127.0.0.1:9092). Prints events/s and the ratio (goal: >= 0.5).

    python benchmarks/bench_merge.py [--events 60000] [--customers 10000] [--rounds 3]

The copy and the merge stage run in turns (`--rounds` pairs), so a load swing on the machine
hits both; each round prints its pair and ratio, the last lines the medians.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from statistics import median

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.app import build_merge_stage
from connector.kafka.topics import internal_topics
from tests.integration.merge_support import merge_settings, produce_workload
from tests.workload import generate


def create(admin: AdminClient, name: str, partitions: int) -> None:
    for fut in admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)]
    ).values():
        fut.result(30)


def transactional_copy(bootstrap: str, topics: list[str], out: str, total: int, interval_s: float) -> float:
    group = f"bench-copy-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-copy-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
            "compression.type": "zstd",
        }
    )
    producer.init_transactions(30)
    consumer.subscribe(topics)
    seen = 0
    offsets: dict[tuple[str, int], int] = {}
    in_txn = False
    started = None
    last_commit = time.monotonic()
    while seen < total:
        msgs = consumer.consume(1000, 0.05)
        for msg in msgs:
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            if not in_txn:
                producer.begin_transaction()
                in_txn = True
            producer.produce(out, key=msg.key(), value=msg.value())
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            seen += 1
        if in_txn and (time.monotonic() - last_commit >= interval_s or seen >= total):
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            in_txn = False
            last_commit = time.monotonic()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return total / elapsed


def merge_run(settings, total: int) -> tuple[float, object]:
    stage = build_merge_stage(settings, create_topics=True, instance_id=f"bench-{uuid.uuid4().hex[:6]}")
    thread = threading.Thread(target=stage.run, daemon=True)
    thread.start()
    started = None
    while True:
        s = stage.stats
        if started is None and s.source_records > 0:
            started = time.perf_counter()
        if s.source_records >= total and s.changes >= s.routed and not stage._in_txn:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    stage.stop()
    thread.join(60)
    return total / elapsed, stage.stats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=3, help="copy/merge pairs, interleaved; the medians are reported"
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    run = uuid.uuid4().hex[:8]

    def settings_for(round_: int):
        # the source topics are shared; each merge round has its own group and internal topics
        return merge_settings(
            bootstrap,
            lambda p: f"bench-{p}-{run}" if p.startswith("src-") else f"bench-{p}-{run}-r{round_}",
            partitions=args.partitions,
        )

    settings = settings_for(0)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create(admin, settings.source.customers.topic, args.partitions)
    create(admin, settings.source.children[0].topic, args.partitions)
    copy_out = f"bench-copy-out-{run}"
    create(admin, copy_out, args.partitions)
    workload = generate(
        seed=1,
        customers=args.customers,
        events=args.events,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
        replay_probability=0.0,
    )
    counts = produce_workload(bootstrap, workload)
    total = sum(counts.values())
    # A stage process does not hold the input: kept alive here, its ~400k objects would be walked
    # by every full garbage collection during both measurements.
    del workload
    gc.collect()
    interval = settings.kafka.commit_interval_ms / 1000
    print(
        f"input: {total} Debezium JSON events over {args.customers} customers, {args.partitions} partitions"
    )
    ceilings: list[float] = []
    rates: list[float] = []
    created: list[str] = []
    for round_ in range(args.rounds):
        ceiling = transactional_copy(bootstrap, settings.source.topics, copy_out, total, interval)
        round_settings = settings_for(round_)
        created += [spec.name for spec in internal_topics(round_settings)]
        rate, stats = merge_run(round_settings, total)
        ceilings.append(ceiling)
        rates.append(rate)
        print(
            f"round {round_ + 1}: ceiling (plain transactional copy, commit every {interval * 1000:.0f} ms) "
            f"{ceiling:7.0f} ev/s, merge (decode+route+merge+map, EOS, same interval) {rate:6.0f} ev/s, "
            f"ratio {rate / ceiling:.2f}"
        )
    print(f"stats (last round): {stats}")
    ratios = [r / c for r, c in zip(rates, ceilings, strict=True)]
    print(f"ceiling  median {median(ceilings):9.0f} ev/s  ({min(ceilings):.0f}-{max(ceilings):.0f})")
    print(f"merge    median {median(rates):9.0f} ev/s  ({min(rates):.0f}-{max(rates):.0f})")
    print(
        f"ratio merge/ceiling: median {median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
        "(goal >= 0.5)"
    )
    admin.delete_topics([*settings.source.topics, copy_out, *created])


if __name__ == "__main__":
    main()
