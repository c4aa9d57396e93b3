"""The local queue against a model of SQS's contract (hypothesis' stateful testing): random sequences
of send, receive (visibility 0 or long), delete, change_visibility, release and redrive on a queue with
a dead-letter queue after 2 receives. After every step the queue holds exactly the model's messages,
visible and in flight as the model says: nothing acknowledged is lost, nothing is duplicated, a stale
receipt handle does nothing, a message reaches the DLQ on the receive after its last allowed one."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from backout.platforms.local.queues import QueueStore
from fuzzing import PROFILE, examples

MAIN, DLQ, MAX_RC = "jobs", "jobs-dlq", 2
LONG = 3600.0  # "invisible for the whole test"


@dataclass
class Msg:
    seq: int
    body: str
    queue: str = MAIN
    receive_count: int = 0
    visible: bool = True
    handle: str | None = None  # the only receipt handle that acts on it


class QueueModel(RuleBasedStateMachine):
    handles = Bundle("handles")

    @initialize()
    def open(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="queue-model-"))
        self.q = QueueStore(self.dir / "platform.db")
        self.q.ensure_queue(DLQ, visibility_timeout=LONG)
        self.q.ensure_queue(MAIN, visibility_timeout=LONG, max_receive_count=MAX_RC, dead_letter_queue=DLQ)
        self.model: dict[str, Msg] = {}
        self.seq = 0
        self.sent = self.deleted = 0

    def teardown(self) -> None:
        if hasattr(self, "q"):
            self.q.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(body=st.text(max_size=20))
    def send(self, body: str) -> None:
        mid = self.q.send(MAIN, body)
        assert mid not in self.model
        self.model[mid] = Msg(self.seq, body)
        self.seq += 1
        self.sent += 1

    @rule(target=handles, n=st.integers(1, 4), vt=st.sampled_from([0.0, LONG]))
    def receive(self, n: int, vt: float) -> str:
        got = self.q.receive(MAIN, n, visibility_timeout=vt)
        expected = []
        for mid, m in sorted(self.model.items(), key=lambda kv: kv[1].seq):
            if len(expected) == n:
                break
            if m.queue != MAIN or not m.visible:
                continue
            if m.receive_count >= MAX_RC:  # SQS: moved to the DLQ at the receive after the last allowed
                m.queue, m.receive_count, m.handle, m.visible = DLQ, 0, None, True
                continue
            expected.append(mid)
        assert [g.id for g in got] == expected
        for g in got:
            m = self.model[g.id]
            m.receive_count += 1
            m.handle, m.visible = g.receipt_handle, vt == 0.0
            assert (g.body, g.receive_count) == (m.body, m.receive_count)
        return got[0].receipt_handle if got else "none:stale"

    @rule(handle=handles)
    def delete(self, handle: str) -> None:
        owner = self._owner(handle)
        assert self.q.delete(MAIN, handle) is (owner is not None)
        if owner is not None:
            del self.model[owner]
            self.deleted += 1

    @rule(handle=handles, vt=st.sampled_from([0.0, LONG]))
    def change_visibility(self, handle: str, vt: float) -> None:
        owner = self._owner(handle)
        assert self.q.change_visibility(MAIN, handle, vt) is (owner is not None)
        if owner is not None:
            self.model[owner].visible = vt == 0.0

    @rule(handle=handles)
    def release(self, handle: str) -> None:
        owner = self._owner(handle)
        assert self.q.release(MAIN, handle) is (owner is not None)
        if owner is not None:
            m = self.model[owner]
            m.receive_count, m.handle, m.visible = max(m.receive_count - 1, 0), None, True

    @rule()
    def redrive(self) -> None:
        moved = [m for m in self.model.values() if m.queue == DLQ]
        assert self.q.redrive(DLQ) == len(moved)
        for m in moved:
            m.queue, m.receive_count, m.handle, m.visible = MAIN, 0, None, True

    def _owner(self, handle: str) -> str | None:
        return next((mid for mid, m in self.model.items() if m.queue == MAIN and m.handle == handle), None)

    @invariant()
    def queues_hold_exactly_the_model(self) -> None:
        if not hasattr(self, "q"):
            return
        main, dlq = self.q.stats(MAIN), self.q.stats(DLQ)
        in_main = [m for m in self.model.values() if m.queue == MAIN]
        assert main.visible == sum(m.visible for m in in_main)
        assert main.in_flight == sum(not m.visible for m in in_main)
        assert main.delayed == 0
        assert dlq.visible + dlq.in_flight + dlq.delayed == sum(m.queue == DLQ for m in self.model.values())
        assert (main.sent, main.deleted) == (self.sent, self.deleted)
        # conservation: every message sent is deleted, in the queue or in the DLQ — once
        assert self.sent == self.deleted + len(self.model)


QueueModel.TestCase.settings = settings(examples(25 if PROFILE == "short" else 400), stateful_step_count=30)
test_queue_against_the_model = QueueModel.TestCase
