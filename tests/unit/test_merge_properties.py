"""Properties of route + merge: Debezium replays and topic interleavings do not change the final state.

A small simulated PostgreSQL database (a few customers and group rows) takes random changes: inserts,
updates (some with an unchanged TOAST column, with or without `before`), deletes, group rows moving
between customers, and incremental-snapshot reads. They are published as Debezium 3.6 would: an
initial snapshot (`r` rows at `(0, S)`), then streamed changes at `(previous commit LSN, LSN)`, the
first transaction after a snapshot without a previous commit (`(LSN, LSN)`, as `decode.position`
writes `[null, LSN]`); deletes are `d` + tombstone, or only a positionless tombstone on
`tombstone_deletes` topics. On the way: blocking snapshots (the reads carry the streaming offset,
`[last commit, LSN]`; changes committed after the pause and before the reads are read and then
streamed), and re-snapshots after Debezium lost its offsets (a change made while it was down reaches
no topic; the reads are `(0, S2)` again). The first change streamed after a snapshot may come from a
transaction that wrote its row before the snapshot point and committed after the read (an LSN below
the read's). Each topic is then delivered at least once: after a crash Debezium re-sends from its
last flushed offset (`s[:k] + s[j:]`, `j <= k`); a re-send that starts before a re-snapshot is also
what `replay --from <time>` does. The topics are interleaved in any order (per-key order holds within
a topic). Routing every event and folding the changes must give exactly the state of the clean
stream, whose live rows are the database's final rows; and `replay --from earliest` (every event
folded again over that state) must end with the same rows, changing no contact on the way unless the
stream holds positionless events (incremental-snapshot rows, tombstone-only deletes). The same with
positions of kind `pg-lsn` (the LSN alone, as unwrapped records carry it).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import load_settings
from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, merge_change, view_of
from connector.models import UNCHANGED, ChangeEvent, Op, RecordRef, SourcePosition
from connector.routing import Router, decode_changes, encode_changes
from connector.state.codec import decode_state, encode_state

from .test_config import REPO_EXAMPLE

CUST = "crm.public.customers"
GROUPS = "crm.public.customer_groups"
NOW = 1_000_000


@dataclass
class _Db:
    """The simulated database and the topics Debezium writes for it."""

    by_id: bool  # group rows keyed by their own id (moves are updates) or by (customer_id, group_id)
    tombstone_deletes: bool
    full_identity: bool = True  # customers' REPLICA IDENTITY: FULL sends `before` with updates
    lsn_only: bool = False  # positions `("pg-lsn", (0, lsn))` alone (unwrapped with `__lsn`)
    lsn: int = 100
    last_commit: int | None = None  # Debezium's last commit LSN: None after a snapshot until one
    straddler: int | None = None  # a transaction open across a snapshot wrote its row at this LSN
    read_position: SourcePosition | None = None  # the position of the snapshot reads
    silent: bool = False  # Debezium is down (it lost its offsets): changes reach no topic
    lag: int = 0  # changes still to commit after a blocking snapshot's pause, before its reads
    held: list[tuple[str, ChangeEvent]] = field(default_factory=list)  # their events, streamed after
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    topics: dict[str, list[ChangeEvent]] = field(default_factory=lambda: {CUST: [], GROUPS: []})

    def group_key(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.by_id:
            return {"id": row["id"]}
        return {"customer_id": row["customer_id"], "group_id": row["group_id"]}

    def _streamed(self) -> SourcePosition:
        """The position of the next streamed change; its transaction commits right after it."""
        if self.straddler is not None:
            lsn, self.straddler = self.straddler, None
        else:
            self.lsn += 1
            lsn = self.lsn
        if self.lsn_only:
            position = SourcePosition("pg-lsn", (0, lsn))
        else:
            position = SourcePosition("pg", (lsn if self.last_commit is None else self.last_commit, lsn))
        self.lsn += 1
        self.last_commit = self.lsn
        return position

    def _put(self, topic: str, event: ChangeEvent) -> None:
        if self.lag:
            self.held.append((topic, event))
            return
        stream = self.topics[topic]
        stream.append(msgspec.structs.replace(event, ref=RecordRef(topic, 0, len(stream))))

    def emit(self, topic: str, op: Op, key: dict[str, Any], before: Any, after: Any, **kw: Any) -> None:
        if self.silent:
            self.lsn += 2  # the change and its commit, in a WAL that no connector reads
            return
        ref = RecordRef(topic, 0, 0)  # numbered by `_put`
        snapshot = kw.pop("snapshot", False)
        if snapshot and kw.pop("incremental", False):
            position = None
        elif snapshot:
            position = self.read_position
        else:
            position = self._streamed()
        if op is Op.DELETE and self.tombstone_deletes:
            # unwrap tombstone mode: the delete is a tombstone that keeps the record's headers
            self._put(topic, ChangeEvent("x", op, key, None, None, None, None, ref, tombstone=True, **kw))
            return
        self._put(topic, ChangeEvent("x", op, key, before, after, position, 1, ref, snapshot=snapshot, **kw))
        if op is Op.DELETE:
            self._put(topic, ChangeEvent("x", op, key, None, None, None, None, ref, tombstone=True, **kw))

    def _reads(self) -> None:
        """Snapshot reads of every current row, then the changes held back since the pause."""
        held, self.held, self.lag = self.held, [], 0
        for cid in sorted(self.customers):
            row = self.customers[cid]
            self.emit(CUST, Op.READ, {"id": cid}, None, dict(row), snapshot=True)
        for gid in sorted(self.groups):
            row = self.groups[gid]
            self.emit(GROUPS, Op.READ, self.group_key(row), None, dict(row), snapshot=True)
        for topic, event in held:
            self._put(topic, event)

    def snapshot(self, straddle: bool = False) -> None:
        """An initial snapshot, or a re-snapshot after Debezium lost its offsets: reads at `(0, S)`."""
        self.finish()
        self.straddler = None
        if straddle:  # a transaction writes its row, and commits after the reads
            self.lsn += 1
            self.straddler = self.lsn
        self.lsn += 2
        self.read_position = SourcePosition("pg-lsn" if self.lsn_only else "pg", (0, self.lsn))
        self.last_commit = None
        self._reads()

    def blocking_snapshot(self, lag: int, straddle: bool, commit: bool) -> None:
        """A blocking snapshot: streaming pauses, the reads carry its offset `[last commit, LSN]`.

        `lag` more changes commit after the pause and before the reads: read, then streamed. With
        `straddle`, a transaction wrote its row before the pause and commits after the reads (with
        `commit`, another one committed between: its LSN is then below the last commit's).
        """
        self.finish()
        self.straddler = None
        if straddle:
            self.lsn += 1
            self.straddler = self.lsn
            lag = 0
        self.lsn += 1  # a message after the last commit, or (`commit`) another commit
        if commit:
            self.last_commit = self.lsn
        if self.lsn_only:
            self.read_position = SourcePosition("pg-lsn", (0, self.lsn))
        else:
            self.read_position = SourcePosition("pg", (self.last_commit or 0, self.lsn))
        self.lag = lag
        if not lag:
            self._reads()

    def finish(self) -> None:
        if self.lag:
            self._reads()

    def apply(self, action: tuple[str, int, int, int]) -> None:
        kind, a, b, c = action
        if kind == "blocking":
            self.blocking_snapshot(lag=a - 1, straddle=b == 2, commit=c % 2 == 0)
            return
        if kind == "resnapshot":
            self.finish()
            if c % 2:  # changed while Debezium was down
                self.silent = True
                self._change(("customer", a, c, c))
                self.silent = False
            self.snapshot(straddle=b == 2)
            return
        self._change(action)
        if self.lag:
            self.lag -= 1
            if not self.lag:
                self._reads()

    def _change(self, action: tuple[str, int, int, int]) -> None:
        kind, a, b, c = action
        if kind == "customer":
            before = self.customers.get(a)
            after = {"id": a, "name": f"n{b}", "notes": f"toast{c}"}
            if before is None:
                self.customers[a] = after
                self.emit(CUST, Op.CREATE, {"id": a}, None, dict(after))
                return
            sent = dict(after)
            if c % 3 == 0:  # TOAST column not in the WAL: keep it
                after["notes"] = before["notes"]
                sent["notes"] = UNCHANGED
            self.customers[a] = after
            self.emit(CUST, Op.UPDATE, {"id": a}, dict(before) if self.full_identity else None, sent)
        elif kind == "delete-customer":
            before = self.customers.pop(a, None)
            if before is not None:
                self.emit(CUST, Op.DELETE, {"id": a}, dict(before), None)
        elif kind == "group":
            self._group(a, b, c)
        elif kind == "delete-group":
            row = self.groups.pop(a, None)
            if row is not None:
                self.emit(GROUPS, Op.DELETE, self.group_key(row), dict(row), None)
        elif kind == "read":  # an incremental snapshot reads the current row
            if a in self.customers:
                self.emit(
                    CUST, Op.READ, {"id": a}, None, dict(self.customers[a]), snapshot=True, incremental=True
                )
            if a in self.groups:
                row = self.groups[a]
                self.emit(
                    GROUPS, Op.READ, self.group_key(row), None, dict(row), snapshot=True, incremental=True
                )

    def _group(self, gid: int, owner: int, name: int) -> None:
        before = self.groups.get(gid)
        after = {"id": gid, "customer_id": owner, "group_id": 1000 + gid, "group_name": f"g{name}"}
        self.groups[gid] = after
        if before is None:
            self.emit(GROUPS, Op.CREATE, self.group_key(after), None, dict(after))
        elif self.by_id or before["customer_id"] == owner:
            self.emit(GROUPS, Op.UPDATE, self.group_key(after), dict(before), dict(after))
        else:  # a primary-key change: `d` (old key, newkey header) + tombstone + `c` (oldkey header)
            old, new = self.group_key(before), self.group_key(after)
            self.emit(GROUPS, Op.DELETE, old, dict(before), None, new_key=new)
            self.emit(GROUPS, Op.CREATE, new, None, dict(after), old_key=old)


def _router(db: _Db) -> Router:
    base = load_settings(REPO_EXAMPLE)
    child = base.source.children[0].model_copy(
        update={
            "key": ["id"] if db.by_id else ["customer_id", "group_id"],
            "tombstone_deletes": db.tombstone_deletes,
        }
    )
    customers = base.source.customers.model_copy(update={"tombstone_deletes": db.tombstone_deletes})
    source = base.source.model_copy(update={"children": [child], "customers": customers})
    return Router(base.model_copy(update={"source": source}))


def _fold(
    router: Router, events: list[ChangeEvent], deletes: list[tuple[str, str, str]] | None = None
) -> dict[str, CustomerState]:
    """Route and merge `events`; `deletes` collects the rows deleted (customer, source, row key)."""
    states: dict[str, CustomerState] = {}
    for event in events:
        routed = router.route(event)
        assert isinstance(routed, list), routed
        # through the changes topic's wire form, as the stage does
        for change in decode_changes(encode_changes(routed)):
            before = states.get(change.customer_key)
            outcome = merge_change(before, change, now_ms=NOW)
            if outcome.applied:
                states[change.customer_key] = outcome.state
                if deletes is not None and _live_rows(outcome.state) < _live_rows(before):
                    deletes.append((change.customer_key, change.source, change.row_key))
    return states


def _fold_over(router: Router, events: list[ChangeEvent], states: dict[str, CustomerState]) -> int:
    """Route and merge `events` over `states` (in place); how many changes altered a live view."""
    changed = 0
    for event in events:
        routed = router.route(event)
        assert isinstance(routed, list), routed
        for change in decode_changes(encode_changes(routed)):
            before = states.get(change.customer_key)
            outcome = merge_change(before, change, now_ms=NOW)
            if outcome.applied:
                states[change.customer_key] = outcome.state
                changed += before is None or view_of(before) != view_of(outcome.state)
    return changed


def _live(states: dict[str, CustomerState]) -> dict[str, Any]:
    return {key: view_of(state) for key, state in states.items() if _live_rows(state)}


def _live_rows(state: CustomerState | None) -> int:
    if state is None:
        return 0
    view = view_of(state)
    return (view.customer is not None) + sum(len(rows) for rows in view.children.values())


def _redeliver(stream: list[ChangeEvent], rng: random.Random, crashes: int) -> list[ChangeEvent]:
    """At-least-once delivery: after each crash the producer re-sends from its last flushed offset."""
    out: list[ChangeEvent] = []
    sent = 0
    for _ in range(crashes):
        if sent >= len(stream):
            break
        crash = rng.randint(sent, len(stream))
        flushed = rng.randint(sent, crash)
        out.extend(stream[sent:crash])
        sent = flushed
    out.extend(stream[sent:])
    return out


def _interleave(a: list[ChangeEvent], b: list[ChangeEvent], rng: random.Random) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rng.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


KINDS = ["customer", "customer", "delete-customer", "group", "group", "delete-group", "read"]
ACTIONS = st.tuples(
    st.sampled_from([*KINDS, "blocking", "resnapshot"]),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 5),
)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.lists(ACTIONS, max_size=6),
    actions=st.lists(ACTIONS, max_size=25),
    by_id=st.booleans(),
    tombstone_deletes=st.booleans(),
    seed=st.integers(0, 2**32),
    crashes=st.integers(1, 3),
    full_identity=st.booleans(),
    lsn_only=st.booleans(),
    straddle=st.booleans(),
)
def test_replays_and_interleavings_fold_to_the_clean_state(
    initial, actions, by_id, tombstone_deletes, seed, crashes, full_identity, lsn_only, straddle
) -> None:
    if by_id and tombstone_deletes:
        by_id = False  # a tombstone keyed by the group row's own id cannot name its customer
    db = _Db(by_id=by_id, tombstone_deletes=tombstone_deletes, full_identity=full_identity, lsn_only=lsn_only)
    for action in initial:  # rows that exist before the connector starts
        if action[0] in KINDS and action[0] != "read":
            db.apply(action)
    db.topics = {CUST: [], GROUPS: []}
    db.snapshot(straddle)
    for action in actions:
        db.apply(action)
    db.finish()
    router = _router(db)
    rng = random.Random(seed)
    clean_deletes: list[tuple[str, str, str]] = []
    clean = _fold(router, _interleave(db.topics[CUST], db.topics[GROUPS], rng), clean_deletes)

    # the live rows are the database's final rows
    for cid in (1, 2):
        state = clean.get(str(cid))
        view = view_of(state) if state is not None else None
        assert (view.customer if view else None) == db.customers.get(cid)
        rows = [r for _, r in sorted(db.groups.items()) if r["customer_id"] == cid]
        got = list(view.children.get("groups", [])) if view else []
        assert sorted(got, key=lambda r: r["id"]) == rows

    replayed_customers = _redeliver(db.topics[CUST], rng, crashes)
    replayed_groups = _redeliver(db.topics[GROUPS], rng, crashes)
    replayed_deletes: list[tuple[str, str, str]] = []
    replayed = _fold(router, _interleave(replayed_customers, replayed_groups, rng), replayed_deletes)
    assert replayed == clean
    if not tombstone_deletes:
        # Deletes with positions are never replayed, so a live row is never deleted on the way (each
        # such delete would reach Yespo; with on_delete=erase it erases the contact). A positionless
        # tombstone delete cannot tell a replay from a new delete: that mode is exempt.
        assert sorted(replayed_deletes) == sorted(clean_deletes)
    # and every state survives the state topic's codec
    for state in replayed.values():
        assert decode_state(encode_state(state)) == state

    # `replay --from earliest`: every event once more, over the state
    events = _interleave(db.topics[CUST], db.topics[GROUPS], rng)
    again = dict(clean)
    changed = _fold_over(router, events, again)
    assert _live(again) == _live(clean)
    positionless = tombstone_deletes or any(e.position is None and not e.tombstone for e in events)
    if not positionless:
        # re-read events are all stale: nothing changes, no contact is sent again
        assert changed == 0
        assert again == clean


def test_redeliver_resends_suffixes_of_what_was_sent() -> None:
    stream = [
        ChangeEvent("x", Op.CREATE, {"id": i}, None, {"id": i}, None, 1, RecordRef(CUST, 0, i))
        for i in range(20)
    ]
    rng = random.Random(3)
    lengths = set()
    for crashes in [0, 1, 2, 3] * 5:
        offsets = [e.ref.offset for e in _redeliver(stream, rng, crashes)]
        lengths.add(len(offsets))
        assert offsets[0] == 0 and offsets[-1] == 19
        # each step moves to the next record, or back to an offset already sent (a replay)
        assert all(b == a + 1 or b <= a for a, b in itertools.pairwise(offsets))
    assert len(lengths) > 1  # some runs did replay


def test_unchanged_toast_value_reaches_merge_as_the_marker_or_from_before() -> None:
    db = _Db(by_id=False, tombstone_deletes=False)
    db.apply(("customer", 1, 1, 1))
    db.apply(("customer", 1, 2, 3))
    update = db.topics[CUST][1]
    (full,) = _router(db).route(update)  # type: ignore[misc]
    assert full.row is not None and full.row["notes"] == "toast1"  # REPLICA IDENTITY FULL
    (default,) = _router(db).route(msgspec.structs.replace(update, before=None))  # type: ignore[misc]
    assert default.row is not None and default.row["notes"] == UNCHANGED_MARKER
