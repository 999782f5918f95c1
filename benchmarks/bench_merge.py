"""Merge-stage throughput with exactly-once, against the raw ceiling measured in the same run.

Ceiling: a plain transactional copy (consume the source topics -> produce the same bytes -> send the
offsets to the transaction -> commit every `commit_interval_ms`), the least any EOS stage must do.
Merge: the real merge stage (decode -> route to the changes topic -> merge -> map -> state + upserts),
from the same input, same commit interval. Both on the local broker (KAFKA_BOOTSTRAP_SERVERS,
default 127.0.0.1:9092). Prints events/s and the ratio (goal: >= 0.5).

    python benchmarks/bench_merge.py [--events 60000] [--customers 10000] [--rounds 3]

The copy and the merge stage run in turns (`--rounds` pairs), so a load swing on the machine
hits both; each round prints its pair and ratio, the last lines the medians.

Two more figures say where the budget goes. Each round also runs the copy once more with
`orjson.loads` of every value added (the parse floor: the least any stage that reads the events
adds to the copy). After the rounds the pipeline's pure steps run on the same input without Kafka
(decode, route + encode, changes decode, merge, project + state encode), each printed in µs of CPU
per event next to the copy's whole per-event budget measured in the rounds.
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

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.app import build_merge_stage
from connector.kafka.clients import produce
from connector.kafka.topics import internal_topics
from tests.integration.merge_support import merge_settings, produce_workload
from tests.workload import generate


def create(admin: AdminClient, name: str, partitions: int) -> None:
    for fut in admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)]
    ).values():
        fut.result(30)


def eos_clients(bootstrap: str, name: str, topics: list[str]) -> tuple[Consumer, Producer]:
    """A read_committed consumer of a fresh group subscribed to `topics`, and a transactional producer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
            "compression.type": "zstd",
        }
    )
    producer.init_transactions(30)
    consumer.subscribe(topics)
    return consumer, producer


def commit(producer: Producer, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
    """Send the consumed offsets to the open transaction and commit it."""
    tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(60)


def transactional_copy(
    bootstrap: str, topics: list[str], out: str, total: int, interval_s: float, *, parse: bool = False
) -> float:
    """Events/s of the plain transactional copy; `parse`: also `orjson.loads` every value."""
    loads = orjson.loads
    consumer, producer = eos_clients(bootstrap, "copy", topics)
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
            if parse:
                value = msg.value()
                if value is not None:
                    loads(value)
            produce(producer, out, key=msg.key(), value=msg.value())  # the stage's producer call
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            seen += 1
        if in_txn and (time.monotonic() - last_commit >= interval_s or seen >= total):
            commit(producer, consumer, offsets)
            in_txn = False
            last_commit = time.monotonic()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return total / elapsed


def rekeyed_floor(
    bootstrap: str,
    topics: list[str],
    hop: str,
    total: int,
    interval_s: float,
    change_bytes: int,
    *,
    parse: bool = False,
) -> float:
    """Events/s of the Kafka work the re-keyed design does at the least, with no processing at all.

    One consumer subscribed to the source topics and a hop topic, one transactional producer, as in
    the merge stage: each poll batch's source records go to the hop topic joined into one record per
    partition (as the stage joins its routed changes), each event cut to `change_bytes` (the mean size
    of an encoded change, so the hop carries no more than the stage's changes topic); the hop records
    are read back (read_committed) and counted. Offsets of both go to the transaction, committed
    every `interval_s`. No state or upsert records are written, so the stage's Kafka work is more.
    `parse`: also `orjson.loads` every source value (the least a stage that re-keys by a column adds).
    """
    loads = orjson.loads
    consumer, producer = eos_clients(bootstrap, "floor", [*topics, hop])
    merged = 0
    offsets: dict[tuple[str, int], int] = {}
    in_txn = False
    started = None
    last_commit = time.monotonic()
    while merged < total:
        msgs = consumer.consume(1000, 0.05)
        joined: dict[int, list[bytes]] = {}
        for msg in msgs:
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            if not in_txn:
                producer.begin_transaction()
                in_txn = True
            if msg.topic() == hop:
                merged += int(msg.key())
            else:
                value = msg.value() or b""
                if parse and value:
                    loads(value)
                joined.setdefault(msg.partition(), []).append(value[:change_bytes])
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        for partition, parts in joined.items():
            value = b"[" + b",".join(parts) + b"]"
            produce(producer, hop, key=str(len(parts)).encode(), value=value, partition=partition)
        if in_txn and (time.monotonic() - last_commit >= interval_s or merged >= total):
            commit(producer, consumer, offsets)
            in_txn = False
            last_commit = time.monotonic()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return total / elapsed


def mean_change_size(settings, workload) -> int:
    """Mean bytes of an encoded routed change over the workload (what the changes topic carries)."""
    from connector.app import build_decoder
    from connector.models import ChangeEvent, RawRecord
    from connector.routing import Router, encode_change

    decode = build_decoder(settings)
    router = Router(settings)
    sizes = [
        len(encode_change(change))
        for i, ev in enumerate(workload.events)
        if isinstance(event := decode(RawRecord(ev.topic, 0, i, ev.key, ev.value)), ChangeEvent)
        for change in router.route(event)
    ]
    return round(sum(sizes) / len(sizes))


def merge_run(settings, total: int) -> tuple[float, object]:
    stage = build_merge_stage(settings, create_topics=True, instance_id=f"bench-{uuid.uuid4().hex[:6]}")
    thread = threading.Thread(target=stage.run, daemon=True)
    thread.start()
    started = None
    while True:
        s = stage.stats
        if started is None and s.source_records > 0:
            started = time.perf_counter()
        if s.source_records >= total and s.changes >= s.routed and not stage._transactions.in_txn:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    stage.stop()
    thread.join(60)
    return total / elapsed, stage.stats


def pure_steps(settings, workload) -> list[tuple[str, float]]:
    """µs of CPU per input event of each pure step of the merge pipeline, no Kafka, same input.

    Mirrors the stage: the input flows in poll batches of 1000 records; a batch's changes are
    joined per target partition into one changes record, which is decoded and merged into the
    states (kept, like the stage's store); at the end each customer changed is projected once and
    its state (and upsert) encoded, as the stage does with this backlog (its merges land in a few
    large transactions: upserts ~ customers). Only the states outlive a batch (freeing the rest is
    timed on its own), as in the stage.
    """
    from connector.app import build_decoder
    from connector.gctune import collector_tuning
    from connector.merge import merge_change
    from connector.models import ChangeEvent, RawRecord
    from connector.projection import MappingProjector, upsert_records
    from connector.routing import Router, decode_changes, encode_change, partition_for
    from connector.state.codec import encode_state

    raws = [RawRecord(ev.topic, 0, i, ev.key, ev.value) for i, ev in enumerate(workload.events)]
    n = len(raws)
    partitions = settings.state.partitions
    decode = build_decoder(settings)
    router = Router(settings)
    projector = MappingProjector(settings.contact)
    labels = (
        "orjson.loads only (reference)",
        "decode",
        "route + encode changes",
        "decode changes",
        "merge",
        "free the batch's objects",
    )
    spent = dict.fromkeys((*labels, "project"), 0.0)
    clock = time.perf_counter
    states: dict = {}
    last_change: dict = {}  # customer -> the last change merged (the upsert record names it)

    with collector_tuning.applied():
        t0 = clock()
        for raw in raws:  # the reference, a pass of its own
            if raw.value is not None:
                orjson.loads(raw.value)
        spent[labels[0]] = clock() - t0
        for start in range(0, n, 1000):
            batch = raws[start : start + 1000]
            t1 = clock()
            events = [decode(raw) for raw in batch]
            t2 = clock()
            parts: dict[int, list[bytes]] = {}
            for event in events:
                if isinstance(event, ChangeEvent):
                    for change in router.route(event):
                        target = partition_for(change.customer_key, partitions)
                        parts.setdefault(target, []).append(encode_change(change))
            records = [b"[" + b",".join(p) + b"]" for p in parts.values()]
            t3 = clock()
            changes = [c for record in records for c in decode_changes(record)]
            t4 = clock()
            for change in changes:
                key = change.customer_key
                outcome = merge_change(states.get(key), change, now_ms=0)
                if outcome.applied:
                    states[key] = outcome.state
                    last_change[key] = change
            t5 = clock()
            del events, parts, records, changes
            t6 = clock()
            for label, took in zip(labels[1:], (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                spent[label] += took
        started = clock()
        for key, change in last_change.items():
            projection = projector.project(states[key], moved=False)
            encode_state(projection.state)
            for record in upsert_records(projection, change):
                orjson.dumps(record)
        spent["project"] = clock() - started
    label = f"project + encode state/upsert ({len(last_change)} projections)"
    return [(label if k == "project" else k, v / n * 1e6) for k, v in spent.items()]


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
    workload_args = {
        "seed": 1,
        "customers": args.customers,
        "events": args.events,
        "customers_topic": settings.source.customers.topic,
        "groups_topic": settings.source.children[0].topic,
        "replay_probability": 0.0,
    }
    workload = generate(**workload_args)
    counts = produce_workload(bootstrap, workload)
    total = sum(counts.values())
    change_bytes = mean_change_size(settings, workload)
    # A stage process does not hold the input: kept alive here, its ~400k objects would be walked
    # by every full garbage collection during both measurements.
    del workload
    gc.collect()
    interval = settings.kafka.commit_interval_ms / 1000
    print(
        f"input: {total} Debezium JSON events over {args.customers} customers, {args.partitions} partitions"
    )
    ceilings: list[float] = []
    floors: list[float] = []
    rekeyed: list[float] = []
    rekeyed_parsed: list[float] = []
    rates: list[float] = []
    created: list[str] = []
    for round_ in range(args.rounds):
        ceiling = transactional_copy(bootstrap, settings.source.topics, copy_out, total, interval)
        floor = transactional_copy(bootstrap, settings.source.topics, copy_out, total, interval, parse=True)
        floors.append(floor)
        hop = f"bench-hop-{run}-r{round_}"  # a group of its own reads the hop from the start
        create(admin, hop, args.partitions)
        created.append(hop)
        rekeyed.append(rekeyed_floor(bootstrap, settings.source.topics, hop, total, interval, change_bytes))
        hop = f"bench-hop-{run}-r{round_}-parsed"
        create(admin, hop, args.partitions)
        created.append(hop)
        rekeyed_parsed.append(
            rekeyed_floor(bootstrap, settings.source.topics, hop, total, interval, change_bytes, parse=True)
        )
        round_settings = settings_for(round_)
        created += [spec.name for spec in internal_topics(round_settings)]
        rate, stats = merge_run(round_settings, total)
        ceilings.append(ceiling)
        rates.append(rate)
        print(
            f"round {round_ + 1}: ceiling (plain transactional copy, commit every {interval * 1000:.0f} ms) "
            f"{ceiling:7.0f} ev/s, merge (decode+route+merge+map, EOS, same interval) {rate:6.0f} ev/s, "
            f"ratio {rate / ceiling:.2f}; copy + orjson.loads {floor:7.0f} ev/s ({floor / ceiling:.2f}); "
            f"re-keyed Kafka floor {rekeyed[-1]:7.0f} ev/s ({rekeyed[-1] / ceiling:.2f}), "
            f"with orjson.loads {rekeyed_parsed[-1]:7.0f} ev/s ({rekeyed_parsed[-1] / ceiling:.2f})"
        )
    print(f"stats (last round): {stats}")
    ratios = [r / c for r, c in zip(rates, ceilings, strict=True)]
    print(f"ceiling  median {median(ceilings):9.0f} ev/s  ({min(ceilings):.0f}-{max(ceilings):.0f})")
    print(f"merge    median {median(rates):9.0f} ev/s  ({min(rates):.0f}-{max(rates):.0f})")
    print(
        f"ratio merge/ceiling: median {median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
        "(goal >= 0.5)"
    )
    floor_ratios = [f / c for f, c in zip(floors, ceilings, strict=True)]
    print(
        f"parse floor (copy + orjson.loads of each value): median {median(floors):.0f} ev/s, "
        f"{median(floor_ratios):.2f} of the copy ({min(floor_ratios):.2f}-{max(floor_ratios):.2f})"
    )
    rekeyed_ratios = [f / c for f, c in zip(rekeyed, ceilings, strict=True)]
    print(
        f"re-keyed Kafka floor (source -> hop topic, {change_bytes}-byte changes joined per partition -> "
        f"read back; no processing, no state or upserts): median {median(rekeyed):.0f} ev/s, "
        f"{median(rekeyed_ratios):.2f} of the copy ({min(rekeyed_ratios):.2f}-{max(rekeyed_ratios):.2f})"
    )
    parsed_ratios = [f / c for f, c in zip(rekeyed_parsed, ceilings, strict=True)]
    print(
        f"re-keyed floor + orjson.loads of each source value (parse and re-key, nothing else): median "
        f"{median(rekeyed_parsed):.0f} ev/s, {median(parsed_ratios):.2f} of the copy "
        f"({min(parsed_ratios):.2f}-{max(parsed_ratios):.2f})"
    )
    budget = 1e6 / median(ceilings)
    print(
        f"per-event budget: the copy spends {budget:.1f} µs per event in all; at 0.5 the merge stage "
        f"may spend {2 * budget:.1f} µs, Kafka client work included"
    )
    regenerated = generate(**workload_args)
    steps = pure_steps(settings, regenerated)
    del regenerated
    print("pure steps, µs of CPU per input event, no Kafka (same input):")
    for label, micros in steps:
        print(f"  {label:58s} {micros:6.2f}")
    print(f"  {'sum of the pipeline steps (without the reference)':58s} {sum(m for _, m in steps[1:]):6.2f}")
    admin.delete_topics([*settings.source.topics, copy_out, *created])


if __name__ == "__main__":
    main()
