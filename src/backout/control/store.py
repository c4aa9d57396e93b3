"""Durable control state of one environment: deployments, events, alarm evaluations,
incidents, drills and the snapshot index (SQLAlchemy 2 on SQLite, `control.db`).

Why it looks the way it does:
- Every method is one short transaction that is committed before it returns, so the
  deployer can write a transition *before* applying it to the platform and a SIGKILL
  at any instant leaves a state that can be resumed or rolled back.
- Writes start with `BEGIN IMMEDIATE` (the SQLite write lock is taken first, so a
  read-check-write such as "no other active deployment" cannot interleave with
  another writer, in this process or another one); a partial unique index on
  `deployments(env) WHERE status is active` backs it up in the schema itself.
- WAL mode: the CLI and the dashboard read while the supervisor writes.
- Methods return frozen dataclasses, never live ORM objects, so results can cross
  threads and outlive their session.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from backout.control.states import (  # noqa: F401 - re-exported: the store's records speak these statuses
    ACTIVE_STATUSES,
    ALARM_STATES,
    AWAITING_APPROVAL,
    CREATED,
    FAILED,
    IN_PROGRESS,
    INCIDENT_SEVERITIES,
    POST_TRAFFIC,
    PRE_TRAFFIC,
    ROLLED_BACK,
    SEVERITIES,
    STATUSES,
    STOPPED,
    SUCCEEDED,
    TERMINAL_STATUSES,
    AlreadyActive,
    InvalidTransition,
    can_transition,
)
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.platforms.base import Release
from backout.statefiles import bound_cache, check_database

_ACTIVE_SQL = ", ".join(f"'{s}'" for s in ACTIVE_STATUSES)
_ROLLBACK_MARK = "rollback_incident"  # in the trigger of the deployment's one rollback incident (open_incident)


# --- ORM rows (private) ---------------------------------------------------------------------
class _Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, Any: JSON}


class _DeploymentRow(_Base):
    __tablename__ = "deployments"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    env: Mapped[str] = mapped_column(String(64))
    stable_release: Mapped[int | None]
    target_release: Mapped[int]
    stable_versions: Mapped[dict[str, Any]]
    target_versions: Mapped[dict[str, Any]]
    strategy: Mapped[str] = mapped_column(String(128))
    steps: Mapped[list[Any]]
    status: Mapped[str] = mapped_column(String(32))
    current_step: Mapped[int | None]
    current_weight: Mapped[float] = mapped_column(Float, default=0.0)
    step_started_at: Mapped[float | None]
    created_at: Mapped[float]
    finished_at: Mapped[float | None]
    description: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    rollback_decided_at: Mapped[float | None]
    rollback_completed_at: Mapped[float | None]

    __table_args__ = (
        # The schema itself refuses a second active deployment per environment.
        Index("ux_one_active_deployment_per_env", "env", unique=True,
              sqlite_where=text(f"status IN ({_ACTIVE_SQL})")),
        Index("ix_deployments_env_created", "env", "created_at"),
    )


class _IncidentRow(_Base):
    __tablename__ = "incidents"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    env: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[float]
    closed_at: Mapped[float | None]
    root_cause: Mapped[str] = mapped_column(Text, default="")
    action_items: Mapped[list[Any]]
    notes: Mapped[list[Any]]
    lessons: Mapped[list[Any]]
    trigger: Mapped[Any] = mapped_column(JSON, nullable=True)
    evidence: Mapped[Any] = mapped_column(JSON, nullable=True)


class _EventRow(_Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    incident_id: Mapped[str | None] = mapped_column(ForeignKey("incidents.id"), index=True)
    ts: Mapped[float]
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[Any] = mapped_column(JSON, nullable=True)


class _AlarmEvaluationRow(_Base):
    __tablename__ = "alarm_evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    alarm: Mapped[str] = mapped_column(String(256))
    ts: Mapped[float]
    state: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None]
    threshold: Mapped[float]
    comparison: Mapped[str] = mapped_column(String(64))
    window_seconds: Mapped[float]
    detail: Mapped[str] = mapped_column(Text, default="")


class _DrillRow(_Base):
    __tablename__ = "drills"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    env: Mapped[str] = mapped_column(String(64))
    fault: Mapped[str] = mapped_column(String(128))
    target_seconds: Mapped[float]
    started_at: Mapped[float]
    finished_at: Mapped[float | None]
    passed: Mapped[bool]
    detection_seconds: Mapped[float | None]
    rollback_seconds: Mapped[float | None]
    detail: Mapped[Any] = mapped_column(JSON, nullable=True)


class _SnapshotRow(_Base):
    __tablename__ = "snapshots"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    env: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    created_at: Mapped[float]
    label: Mapped[str] = mapped_column(Text, default="")
    platform_snapshot_id: Mapped[str] = mapped_column(String(256))


class _SwitchRow(_Base):
    """The operator's wanted state of a traffic switch (API throttle, processing), written before
    it is applied so a restarted process puts the platform back where the operator left it."""

    __tablename__ = "switches"
    env: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    ts: Mapped[float]
    who: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


# --- public records ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    id: str
    env: str
    stable_release: int | None  # backout's release ids
    target_release: int
    strategy: str
    steps: tuple[Step, ...]
    status: str
    current_step: int | None  # index into steps; None before the first traffic shift
    current_weight: float  # percent of traffic on the target release
    step_started_at: float | None
    created_at: float
    finished_at: float | None
    description: str
    reason: str
    created_by: str
    rollback_decided_at: float | None
    rollback_completed_at: float | None
    stable_versions: dict[str, str] = field(default_factory=dict)  # function → its own version number
    target_versions: dict[str, str] = field(default_factory=dict)

    @property
    def stable(self) -> str:
        """`r6`, or `r6 (worker v12)` where a function's version number differs from the release id."""
        return release_label(self.stable_release, self.stable_versions)

    @property
    def target(self) -> str:
        return release_label(self.target_release, self.target_versions)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def strategy_obj(self) -> Strategy:
        return Strategy(self.strategy, self.steps)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.created_at


@dataclass(frozen=True)
class Event:
    id: int
    deployment_id: str | None
    incident_id: str | None
    ts: float
    kind: str
    severity: str
    message: str
    data: Any


@dataclass(frozen=True)
class AlarmEvaluation:
    id: int
    deployment_id: str
    alarm: str
    ts: float
    state: str
    value: float | None
    threshold: float
    comparison: str
    window_seconds: float
    detail: str


@dataclass(frozen=True)
class Incident:
    id: str
    env: str
    deployment_id: str | None
    severity: str
    status: str  # open | closed
    title: str
    opened_at: float
    closed_at: float | None
    root_cause: str
    action_items: list[dict[str, Any]] = field(default_factory=list)  # {text, owner, done, ts}
    notes: list[dict[str, Any]] = field(default_factory=list)  # {text, author, ts}
    lessons: list[dict[str, Any]] = field(default_factory=list)  # {text, ts}
    trigger: Any = None
    evidence: Any = None


@dataclass(frozen=True)
class Drill:
    id: str
    env: str
    fault: str
    target_seconds: float
    started_at: float
    finished_at: float | None
    passed: bool
    detection_seconds: float | None
    rollback_seconds: float | None
    detail: Any

    @property
    def kind(self) -> str:
        """`rollback` (a fault injected, rolled back automatically) or `emergency` (stop → verify → resume)."""
        return "emergency" if self.fault == "emergency" else "rollback"


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    env: str
    deployment_id: str | None
    created_at: float
    label: str
    platform_snapshot_id: str


def already_active(d: _DeploymentRow | Deployment, driver: str = "") -> AlreadyActive:
    """`driver`: who drives it, on a shared store (`… (InProgress, r6 → r7), held by host:pid:uuid …`)."""
    return AlreadyActive(
        f"deployment {d.id} is already active in {d.env} ({d.status}, "
        f"{release_label(d.stable_release, d.stable_versions or {})} → "
        f"{release_label(d.target_release, d.target_versions or {})})"
        + (f", {driver}" if driver else "")
        + f"; wait for it to finish or stop it (backout deployment show {d.id})"
    )


def release_label(release: int | None, versions: dict[str, str]) -> str:
    if release is None:
        return "none"
    differ = {f: v for f, v in versions.items() if v != str(release)}
    if not differ:
        return f"r{release}"
    return f"r{release} (" + ", ".join(f"{f} v{v}" for f, v in sorted(differ.items())) + ")"


def _record(cls: type, row: Any, **overrides: Any) -> Any:
    return cls(**{f.name: overrides[f.name] if f.name in overrides else getattr(row, f.name)
                  for f in fields(cls)})


def _deployment(row: _DeploymentRow) -> Deployment:
    return _record(Deployment, row, steps=tuple(Step.from_dict(s) for s in row.steps),
                   stable_versions=dict(row.stable_versions or {}), target_versions=dict(row.target_versions or {}))


def _incident(row: _IncidentRow) -> Incident:
    return _record(Incident, row, action_items=list(row.action_items or []), notes=list(row.notes or []),
                   lessons=list(row.lessons or []))


_DEPLOYMENT_FIELDS = {f.name for f in fields(Deployment)} - {
    "id", "env", "created_at", "status", "steps", "stable_versions", "target_versions"}


def canonical_id(prefix: str, raw: str) -> str:
    """`7`, `d-7`, `D-0007` → `d-0007`; lets an operator type the short form."""
    s = str(raw).strip()
    if s.isdigit():
        return f"{prefix}{int(s):04d}"
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", s, flags=re.IGNORECASE)
    return f"{prefix}{int(m.group(1)):04d}" if m else s


class ControlStore(Protocol):
    """What the control plane (deployer, runbooks, server) calls on its store. Two implementations:
    `Store` here (SQLite, one machine) and `shared_store.SharedStore` (DynamoDB, every machine of an AWS
    environment); `shared_store.open_store` picks one. Records are the frozen dataclasses above."""

    def create_deployment(self, env: str, stable: Release | None, target: Release, strategy: Strategy, *,
                          description: str = "", created_by: str = "", now: float | None = None) -> Deployment: ...
    def refuse_if_active(self, env: str) -> None: ...
    def get(self, deployment_id: str) -> Deployment: ...
    def find(self, deployment_id: str) -> Deployment | None: ...
    def active_deployment(self, env: str) -> Deployment | None: ...
    def active_deployments(self) -> list[Deployment]: ...
    def deployments(self, env: str | None = None, limit: int | None = 50) -> list[Deployment]: ...
    def transition(self, deployment_id: str, status: str, *, expect: str | Iterable[str] | None = None,
                   **fields_: Any) -> Deployment: ...
    def update(self, deployment_id: str, **fields_: Any) -> Deployment: ...
    def add_event(self, kind: str, message: str, *, deployment_id: str | None = None,
                  incident_id: str | None = None, severity: str = "info", data: Any = None,
                  ts: float | None = None) -> Event: ...
    def events(self, *, deployment_id: str | None = None, incident_id: str | None = None,
               after_id: int | None = None, limit: int | None = None) -> list[Event]: ...
    def record_alarm_evaluation(self, deployment_id: str, alarm: str, state: str, value: float | None,
                                threshold: float, comparison: str, window_seconds: float, detail: str = "",
                                ts: float | None = None) -> AlarmEvaluation: ...
    def alarm_evaluations(self, deployment_id: str, alarm: str | None = None) -> list[AlarmEvaluation]: ...
    def open_incident(self, env: str, title: str, *, severity: str = "critical", deployment_id: str | None = None,
                      trigger: Any = None, evidence: Any = None, opened_at: float | None = None,
                      rollback: bool = False) -> Incident:
        """`rollback`: the deployment's one rollback incident — when another writer (a restarted driver,
        the guard) opened it first, that one is returned and nothing new is written."""
        ...
    def get_incident(self, incident_id: str) -> Incident: ...
    def incidents(self, env: str | None = None, status: str | None = None,
                  limit: int | None = None) -> list[Incident]: ...
    def incident_for_deployment(self, deployment_id: str) -> Incident | None: ...
    def add_incident_note(self, incident_id: str, text: str, author: str = "") -> Incident: ...
    def add_incident_action(self, incident_id: str, text: str, owner: str = "") -> Incident: ...
    def add_incident_lesson(self, incident_id: str, text: str) -> Incident: ...
    def complete_incident_action(self, incident_id: str, index: int) -> Incident: ...
    def set_root_cause(self, incident_id: str, root_cause: str) -> Incident: ...
    def close_incident(self, incident_id: str, root_cause: str | None = None,
                       now: float | None = None) -> Incident: ...
    def record_drill(self, env: str, fault: str, target_seconds: float, started_at: float,
                     finished_at: float | None, passed: bool, detection_seconds: float | None = None,
                     rollback_seconds: float | None = None, detail: Any = None) -> Drill: ...
    def drills(self, env: str | None = None, limit: int | None = None) -> list[Drill]: ...
    def set_switch(self, env: str, key: str, value: Any, who: str = "", reason: str = "") -> None: ...
    def switches(self, env: str) -> dict[str, Any]: ...
    def record_snapshot(self, env: str, platform_snapshot_id: str, label: str = "",
                        deployment_id: str | None = None, created_at: float | None = None) -> SnapshotRecord: ...
    def snapshots(self, env: str | None = None, deployment_id: str | None = None) -> list[SnapshotRecord]: ...
    def close(self) -> None: ...


class Store:
    """The control state of one environment. Thread-safe; one instance per process is enough,
    several processes may open the same file."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_database(self.path)  # a damaged file: one line that says how to recover, no traceback
        self._engine = create_engine(
            f"sqlite:///{self.path}",
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
        )

        @event.listens_for(self._engine, "connect")
        def _on_connect(dbapi_conn: Any, _conn_record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own is too late)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            bound_cache(dbapi_conn)

        @event.listens_for(self._engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

        self._reader = sessionmaker(bind=self._engine, expire_on_commit=False)
        self._writer = sessionmaker(bind=self._engine.execution_options(write=True), expire_on_commit=False)
        with self._engine.execution_options(write=True).begin() as conn:  # serialized across processes
            _Base.metadata.create_all(conn)

    @classmethod
    def for_env(cls, state_dir: str | Path) -> Store:
        """The store of the environment whose state dir is `state_dir` (`control.db` in it)."""
        return cls(Path(state_dir) / "control.db")

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writer() as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reader() as s, s.begin():
            yield s

    @staticmethod
    def _next_seq(s: Session, row: type) -> int:
        return int(s.scalar(select(func.coalesce(func.max(row.seq), 0))) or 0) + 1  # type: ignore[attr-defined]

    # --- deployments ---------------------------------------------------------------------------
    def create_deployment(
        self,
        env: str,
        stable: Release | None,
        target: Release,
        strategy: Strategy,
        *,
        description: str = "",
        created_by: str = "",
        now: float | None = None,
    ) -> Deployment:
        """A new deployment in `Created`. Raises UsageError naming the active one if the environment
        already has one (checked under the write lock, and by a unique index)."""
        try:
            with self._write() as s:
                active = self._active_row(s, env)
                if active is not None:
                    raise already_active(active)
                seq = self._next_seq(s, _DeploymentRow)
                row = _DeploymentRow(
                    seq=seq, id=f"d-{seq:04d}", env=env, stable_release=None if stable is None else stable.id,
                    target_release=target.id, stable_versions={} if stable is None else dict(stable.versions),
                    target_versions=dict(target.versions), strategy=strategy.name, steps=strategy.as_json(),
                    status=CREATED, current_step=None, current_weight=0.0, step_started_at=None,
                    created_at=time.time() if now is None else now, finished_at=None,
                    description=description, reason="", created_by=created_by,
                    rollback_decided_at=None, rollback_completed_at=None,
                )
                s.add(row)
                s.flush()
                return _deployment(row)
        except IntegrityError:
            active_now = self.active_deployment(env)
            if active_now is None:
                raise
            raise already_active(active_now) from None

    def refuse_if_active(self, env: str) -> None:
        """Raise AlreadyActive naming the environment's active deployment, if there is one."""
        active = self.active_deployment(env)
        if active is not None:
            raise already_active(active)

    @staticmethod
    def _active_row(s: Session, env: str) -> _DeploymentRow | None:
        q = select(_DeploymentRow).where(_DeploymentRow.env == env,
                                         _DeploymentRow.status.in_(ACTIVE_STATUSES))
        return s.scalars(q).first()

    def _row(self, s: Session, deployment_id: str) -> _DeploymentRow:
        did = canonical_id("d-", deployment_id)
        row = s.scalars(select(_DeploymentRow).where(_DeploymentRow.id == did)).first()
        if row is None:
            raise UsageError(f"no deployment {deployment_id!r} (list them with: backout deployments)")
        return row

    def get(self, deployment_id: str) -> Deployment:
        """The deployment (`7`, `d-7` and `d-0007` all work); UsageError if unknown."""
        with self._read() as s:
            return _deployment(self._row(s, deployment_id))

    def find(self, deployment_id: str) -> Deployment | None:
        try:
            return self.get(deployment_id)
        except UsageError:
            return None

    def active_deployment(self, env: str) -> Deployment | None:
        with self._read() as s:
            row = self._active_row(s, env)
            return None if row is None else _deployment(row)

    def active_deployments(self) -> list[Deployment]:
        """Every unfinished deployment: what a restarted supervisor resumes or rolls back."""
        with self._read() as s:
            rows = s.scalars(select(_DeploymentRow).where(_DeploymentRow.status.in_(ACTIVE_STATUSES))
                             .order_by(_DeploymentRow.seq))
            return [_deployment(r) for r in rows]

    def deployments(self, env: str | None = None, limit: int | None = 50) -> list[Deployment]:
        """History, newest first."""
        with self._read() as s:
            q = select(_DeploymentRow).order_by(_DeploymentRow.seq.desc())
            if env is not None:
                q = q.where(_DeploymentRow.env == env)
            if limit is not None:
                q = q.limit(limit)
            return [_deployment(r) for r in s.scalars(q)]

    def transition(
        self, deployment_id: str, status: str, *, expect: str | Iterable[str] | None = None, **fields_: Any
    ) -> Deployment:
        """Move to `status` (and set `fields_`) atomically, committed before returning.

        Raises InvalidTransition if the move is not allowed (terminal statuses are final, active
        ones only move forward) or the current status is not in `expect`. Entering a terminal
        status sets `finished_at`, entering RolledBack sets `rollback_decided_at`, unless given."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expected = {expect} if isinstance(expect, str) else (set(expect) if expect is not None else None)
        self._check_fields(fields_)
        now = time.time()
        with self._write() as s:
            row = self._row(s, deployment_id)
            if expected is not None and row.status not in expected:
                raise InvalidTransition(
                    f"deployment {row.id} is {row.status}, not {' or '.join(sorted(expected))}")
            if not can_transition(row.status, status):
                raise InvalidTransition(f"deployment {row.id} is {row.status}; it cannot become {status}")
            row.status = status
            if status in TERMINAL_STATUSES and "finished_at" not in fields_ and row.finished_at is None:
                row.finished_at = now
            if status == ROLLED_BACK and row.rollback_decided_at is None:
                row.rollback_decided_at = now  # overridden below when the caller gives it
            for k, v in fields_.items():
                setattr(row, k, v)
            s.flush()
            return _deployment(row)

    def update(self, deployment_id: str, **fields_: Any) -> Deployment:
        """Set fields without changing the status (step, weight, rollback_completed_at …); committed."""
        self._check_fields(fields_)
        with self._write() as s:
            row = self._row(s, deployment_id)
            for k, v in fields_.items():
                setattr(row, k, v)
            s.flush()
            return _deployment(row)

    @staticmethod
    def _check_fields(fields_: dict[str, Any]) -> None:
        unknown = set(fields_) - _DEPLOYMENT_FIELDS
        if unknown:
            raise TypeError(f"not updatable deployment fields: {', '.join(sorted(unknown))}")
        if "steps" in fields_:
            raise TypeError("steps are fixed at creation")

    # --- events --------------------------------------------------------------------------------
    def add_event(
        self,
        kind: str,
        message: str,
        *,
        deployment_id: str | None = None,
        incident_id: str | None = None,
        severity: str = "info",
        data: Any = None,
        ts: float | None = None,
    ) -> Event:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        with self._write() as s:
            row = _EventRow(
                deployment_id=None if deployment_id is None else canonical_id("d-", deployment_id),
                incident_id=None if incident_id is None else canonical_id("INC-", incident_id),
                ts=time.time() if ts is None else ts, kind=kind, severity=severity, message=message,
                data=data,
            )
            s.add(row)
            s.flush()
            return _record(Event, row)

    def events(
        self,
        *,
        deployment_id: str | None = None,
        incident_id: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Oldest first. `after_id` lets a follower poll only what is new. With both ids, events of
        either (an incident's timeline includes its deployment's events)."""
        with self._read() as s:
            q = select(_EventRow).order_by(_EventRow.ts, _EventRow.id)
            conds = []
            if deployment_id is not None:
                conds.append(_EventRow.deployment_id == canonical_id("d-", deployment_id))
            if incident_id is not None:
                conds.append(_EventRow.incident_id == canonical_id("INC-", incident_id))
            if len(conds) == 1:
                q = q.where(conds[0])
            elif conds:
                q = q.where(conds[0] | conds[1])
            if after_id is not None:
                q = q.where(_EventRow.id > after_id)
            if limit is not None:
                q = q.limit(limit)
            return [_record(Event, r) for r in s.scalars(q)]

    # --- alarm evaluations -------------------------------------------------------------------
    def record_alarm_evaluation(
        self,
        deployment_id: str,
        alarm: str,
        state: str,
        value: float | None,
        threshold: float,
        comparison: str,
        window_seconds: float,
        detail: str = "",
        ts: float | None = None,
    ) -> AlarmEvaluation:
        if state not in ALARM_STATES:
            raise ValueError(f"alarm state must be one of {ALARM_STATES}, not {state!r}")
        with self._write() as s:
            row = _AlarmEvaluationRow(
                deployment_id=canonical_id("d-", deployment_id), alarm=alarm, state=state, value=value,
                threshold=threshold, comparison=comparison, window_seconds=window_seconds, detail=detail,
                ts=time.time() if ts is None else ts,
            )
            s.add(row)
            s.flush()
            return _record(AlarmEvaluation, row)

    def alarm_evaluations(self, deployment_id: str, alarm: str | None = None) -> list[AlarmEvaluation]:
        with self._read() as s:
            q = (select(_AlarmEvaluationRow)
                 .where(_AlarmEvaluationRow.deployment_id == canonical_id("d-", deployment_id))
                 .order_by(_AlarmEvaluationRow.ts, _AlarmEvaluationRow.id))
            if alarm is not None:
                q = q.where(_AlarmEvaluationRow.alarm == alarm)
            return [_record(AlarmEvaluation, r) for r in s.scalars(q)]

    # --- incidents -----------------------------------------------------------------------------
    def open_incident(
        self,
        env: str,
        title: str,
        *,
        severity: str = "critical",
        deployment_id: str | None = None,
        trigger: Any = None,
        evidence: Any = None,
        opened_at: float | None = None,
        rollback: bool = False,
    ) -> Incident:
        if severity not in INCIDENT_SEVERITIES:
            raise ValueError(f"severity must be one of {INCIDENT_SEVERITIES}, not {severity!r}")
        with self._write() as s:
            if rollback and deployment_id is not None:  # one writer at a time here: the check is the guarantee
                did = canonical_id("d-", deployment_id)
                for row in s.scalars(select(_IncidentRow).where(_IncidentRow.deployment_id == did)):
                    if isinstance(row.trigger, dict) and row.trigger.get(_ROLLBACK_MARK):
                        return _incident(row)
                trigger = {**(trigger if isinstance(trigger, dict) else {"value": trigger}), _ROLLBACK_MARK: True}
            seq = self._next_seq(s, _IncidentRow)
            row = _IncidentRow(
                seq=seq, id=f"INC-{seq:04d}", env=env,
                deployment_id=None if deployment_id is None else canonical_id("d-", deployment_id),
                severity=severity, status="open", title=title,
                opened_at=time.time() if opened_at is None else opened_at, closed_at=None, root_cause="",
                action_items=[], notes=[], lessons=[], trigger=trigger, evidence=evidence,
            )
            s.add(row)
            s.flush()
            return _incident(row)

    def _incident_row(self, s: Session, incident_id: str) -> _IncidentRow:
        iid = canonical_id("INC-", incident_id)
        row = s.scalars(select(_IncidentRow).where(_IncidentRow.id == iid)).first()
        if row is None:
            raise UsageError(f"no incident {incident_id!r} (list them with: backout incidents)")
        return row

    def get_incident(self, incident_id: str) -> Incident:
        with self._read() as s:
            return _incident(self._incident_row(s, incident_id))

    def incidents(self, env: str | None = None, status: str | None = None,
                  limit: int | None = None) -> list[Incident]:
        """Newest first."""
        with self._read() as s:
            q = select(_IncidentRow).order_by(_IncidentRow.seq.desc())
            if env is not None:
                q = q.where(_IncidentRow.env == env)
            if status is not None:
                q = q.where(_IncidentRow.status == status)
            if limit is not None:
                q = q.limit(limit)
            return [_incident(r) for r in s.scalars(q)]

    def incident_for_deployment(self, deployment_id: str) -> Incident | None:
        with self._read() as s:
            row = s.scalars(select(_IncidentRow)
                            .where(_IncidentRow.deployment_id == canonical_id("d-", deployment_id))
                            .order_by(_IncidentRow.seq.desc())).first()
            return None if row is None else _incident(row)

    def _append(self, incident_id: str, column: str, item: dict[str, Any]) -> Incident:
        with self._write() as s:
            row = self._incident_row(s, incident_id)
            setattr(row, column, [*getattr(row, column), item])  # new list: JSON columns track assignment
            s.flush()
            return _incident(row)

    def add_incident_note(self, incident_id: str, text: str, author: str = "") -> Incident:
        return self._append(incident_id, "notes", {"text": text, "author": author, "ts": time.time()})

    def add_incident_action(self, incident_id: str, text: str, owner: str = "") -> Incident:
        return self._append(incident_id, "action_items",
                            {"text": text, "owner": owner, "done": False, "ts": time.time()})

    def add_incident_lesson(self, incident_id: str, text: str) -> Incident:
        return self._append(incident_id, "lessons", {"text": text, "ts": time.time()})

    def complete_incident_action(self, incident_id: str, index: int) -> Incident:
        """Mark action item `index` (0-based) done."""
        with self._write() as s:
            row = self._incident_row(s, incident_id)
            items = [dict(a) for a in row.action_items]
            if not 0 <= index < len(items):
                raise UsageError(f"incident {row.id} has no action item {index + 1} (it has {len(items)})")
            items[index]["done"] = True
            row.action_items = items
            s.flush()
            return _incident(row)

    def set_root_cause(self, incident_id: str, root_cause: str) -> Incident:
        with self._write() as s:
            row = self._incident_row(s, incident_id)
            row.root_cause = root_cause
            s.flush()
            return _incident(row)

    def close_incident(self, incident_id: str, root_cause: str | None = None,
                       now: float | None = None) -> Incident:
        with self._write() as s:
            row = self._incident_row(s, incident_id)
            if row.status == "closed":
                raise UsageError(f"incident {row.id} is already closed")
            row.status = "closed"
            row.closed_at = time.time() if now is None else now
            if root_cause is not None:
                row.root_cause = root_cause
            s.flush()
            return _incident(row)

    # --- drills --------------------------------------------------------------------------------
    def record_drill(
        self,
        env: str,
        fault: str,
        target_seconds: float,
        started_at: float,
        finished_at: float | None,
        passed: bool,
        detection_seconds: float | None = None,
        rollback_seconds: float | None = None,
        detail: Any = None,
    ) -> Drill:
        with self._write() as s:
            seq = self._next_seq(s, _DrillRow)
            row = _DrillRow(
                seq=seq, id=f"drill-{seq:04d}", env=env, fault=fault, target_seconds=target_seconds,
                started_at=started_at, finished_at=finished_at, passed=passed,
                detection_seconds=detection_seconds, rollback_seconds=rollback_seconds, detail=detail,
            )
            s.add(row)
            s.flush()
            return _record(Drill, row)

    def drills(self, env: str | None = None, limit: int | None = None) -> list[Drill]:
        """Newest first."""
        with self._read() as s:
            q = select(_DrillRow).order_by(_DrillRow.seq.desc())
            if env is not None:
                q = q.where(_DrillRow.env == env)
            if limit is not None:
                q = q.limit(limit)
            return [_record(Drill, r) for r in s.scalars(q)]

    # --- snapshot index ------------------------------------------------------------------------
    def set_switch(self, env: str, key: str, value: Any, who: str = "", reason: str = "") -> None:
        with self._write() as s:
            row = s.get(_SwitchRow, (env, key))
            if row is None:
                s.add(_SwitchRow(env=env, key=key, value=value, ts=time.time(), who=who, reason=reason))
            else:
                row.value, row.ts, row.who, row.reason = value, time.time(), who, reason

    def switches(self, env: str) -> dict[str, Any]:
        """Every switch's wanted value in `env` (absent: never set by an operator)."""
        with self._read() as s:
            return {r.key: r.value for r in s.scalars(select(_SwitchRow).where(_SwitchRow.env == env))}

    def record_snapshot(
        self,
        env: str,
        platform_snapshot_id: str,
        label: str = "",
        deployment_id: str | None = None,
        created_at: float | None = None,
    ) -> SnapshotRecord:
        with self._write() as s:
            seq = self._next_seq(s, _SnapshotRow)
            row = _SnapshotRow(
                seq=seq, id=f"snap-{seq:04d}", env=env,
                deployment_id=None if deployment_id is None else canonical_id("d-", deployment_id),
                created_at=time.time() if created_at is None else created_at, label=label,
                platform_snapshot_id=platform_snapshot_id,
            )
            s.add(row)
            s.flush()
            return _record(SnapshotRecord, row)

    def snapshots(self, env: str | None = None, deployment_id: str | None = None) -> list[SnapshotRecord]:
        """Newest first."""
        with self._read() as s:
            q = select(_SnapshotRow).order_by(_SnapshotRow.seq.desc())
            if env is not None:
                q = q.where(_SnapshotRow.env == env)
            if deployment_id is not None:
                q = q.where(_SnapshotRow.deployment_id == canonical_id("d-", deployment_id))
            return [_record(SnapshotRecord, r) for r in s.scalars(q)]
