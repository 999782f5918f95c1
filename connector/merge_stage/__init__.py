"""The merge stage: route, merge, map; commit everything in ONE Kafka transaction.

State writes, upserts, DLQ records and the consumed offsets commit together (KIP-447).

Two kinds of input share one consumer (group `kafka.group_id`) and one transactional producer:

1. source records (Debezium topics) -> decode -> route -> changes topic (keyed and partitioned by
   customer key; the repartition step: `repartition.py`).
2. changes records -> merge into the customer's state -> map -> state topic (+ upserts topic when the
   contact changed), both at the changes record's partition number (`merging.py`).

State changes are buffered in a `StateTransaction` and reach the local store only after the Kafka
commit succeeded (`transactions.py`). On assignment a changes partition is paused until its state
partition is restored from the compacted state topic (read_committed, earliest -> end). The changes
topic has no retention: the stage deletes what it has merged and committed (`Sweeper.purge_merged`),
as Kafka Streams does. The loop (`stage.py`) drives them all.
"""

from __future__ import annotations

from connector.merge_stage.repartition import Decoder
from connector.merge_stage.stage import MergeStage, new_instance_id
from connector.merge_stage.stats import MergeStats

__all__ = ["Decoder", "MergeStage", "MergeStats", "new_instance_id"]
