"""Example projection: a leaderboard per (project, kind, metric) that keeps the history of leader changes.

An artifact recorded with metric ``m`` takes the lead of its (project_id, kind, m) board when its value
is strictly better than the leader's (``max`` or ``min`` per metric name); on a tie the earlier artifact
keeps the lead, as ``best()`` ranks ties. Pins do not change who leads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import msgspec

from ..ledger.events import ArtifactRecorded

if TYPE_CHECKING:
    from ..facade.audit import LedgerEvent

Mode = Literal["max", "min"]
BoardKey = tuple[str | None, str, str]  # (project_id, kind, metric)


class Lead(msgspec.Struct, frozen=True, array_like=True):
    """A board's leader from seq ``seq`` on: the artifact, its value, and the leader it replaced (if any)."""

    seq: int
    artifact_id: str
    value: int | float
    previous: str | None


class Boards:
    """Leaderboard state: for each (project_id, kind, metric), the list of leads, the newest last."""

    __slots__ = ("leads",)

    def __init__(self, leads: dict[BoardKey, list[Lead]] | None = None):
        self.leads: dict[BoardKey, list[Lead]] = {} if leads is None else leads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Boards) and self.leads == other.leads

    def __repr__(self) -> str:
        return f"Boards({self.leads!r})"

    def leader(self, project_id: str | None, kind: str, metric: str) -> Lead | None:
        """The current lead of one board, or None if no artifact of that kind has the metric."""
        changes = self.leads.get((project_id, kind, metric))
        return changes[-1] if changes else None

    def history(self, project_id: str | None, kind: str, metric: str) -> list[Lead]:
        """Every change of leader of one board, oldest first."""
        return list(self.leads.get((project_id, kind, metric), ()))

    def boards(self) -> list[BoardKey]:
        """The boards that have a leader, sorted (None project first)."""
        return sorted(self.leads, key=lambda k: ("" if k[0] is None else "\0" + k[0], k[1], k[2]))


_codec_type = list[tuple[str | None, str, str, list[Lead]]]
_decoder = msgspec.msgpack.Decoder(_codec_type)


class Leaderboard:
    """Leaders per (project, kind, metric); ``modes`` names the metrics ranked ``min`` (others use ``default``)."""

    version = 1

    def __init__(self, modes: Mapping[str, Mode] | None = None, default: Mode = "max", *,
                 name: str = "leaderboard"):
        modes = dict(modes or {})
        for metric, mode in [*modes.items(), ("default", default)]:
            if mode not in ("max", "min"):
                raise ValueError(f"mode of {metric!r} must be 'max' or 'min', got {mode!r}")
        self.modes = modes
        self.default = default
        self.name = name

    def initial(self) -> Boards:
        """No boards yet."""
        return Boards()

    def apply(self, state: Boards, event: "LedgerEvent") -> Boards:
        """Let an artifact's metrics challenge the leaders of its boards."""
        ev = event.event
        if not isinstance(ev, ArtifactRecorded):
            return state
        for metric, value in ev.metrics.items():
            key = (ev.project_id, ev.kind, metric)
            changes = state.leads.get(key)
            if changes:
                best = changes[-1]
                better = value < best.value if self.modes.get(metric, self.default) == "min" else value > best.value
                if not better:
                    continue
                changes.append(Lead(event.seq, ev.artifact_id, value, best.artifact_id))
            else:
                state.leads[key] = [Lead(event.seq, ev.artifact_id, value, None)]
        return state

    def apply_batch(self, state: Boards, events: Sequence["LedgerEvent"]) -> Boards:
        """The same as applying ``events`` one by one."""
        for e in events:
            state = self.apply(state, e)
        return state

    def encode(self, state: Boards) -> bytes:
        """msgpack of [project, kind, metric, leads] rows."""
        return msgspec.msgpack.encode([(*k, v) for k, v in state.leads.items()])

    def decode(self, data: bytes) -> Boards:
        """The inverse of ``encode``."""
        return Boards({(p, k, m): leads for p, k, m, leads in _decoder.decode(data)})
