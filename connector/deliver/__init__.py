"""The deliver stage: upserts topic (read_committed) -> Yespo contacts API (see `stage`).

`build_deliver_stage` wires the production stage; `DeliverStage` runs it.
"""

from __future__ import annotations

import logging

from connector.deliver.build import build_deliver_stage
from connector.deliver.runner import Runner, inline_runner
from connector.deliver.stage import DeliverStage
from connector.sink.recorder import DeliverStats

__all__ = ["DeliverStage", "DeliverStats", "Runner", "build_deliver_stage", "inline_runner"]

logger = logging.getLogger(__name__)
