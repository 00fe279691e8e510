"""Example projection: a leaderboard per (project, kind, metric) that keeps the history of leader changes.

A board's leader is, at every seq, what ``best(kind=, metric=, mode=, scope="project")`` answers for its
project: the live artifact (recorded, neither retired nor purged) with the best value, ``max`` or
``min`` per metric name, a tie going to the newer artifact. Each change of leader is a ``Lead``: an
artifact recorded with a better or equal value takes the lead; when the leader is retired or purged,
the next best live artifact does, or nobody (a ``Lead`` whose ``artifact_id`` is None) if none is left.
Pins do not change who leads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import msgspec

from ..ledger.events import ArtifactRecorded, Purged, Retired

if TYPE_CHECKING:
    from ..facade.audit import LedgerEvent

Mode = Literal["max", "min"]
BoardKey = tuple[str | None, str, str]  # (project_id, kind, metric)


class Lead(msgspec.Struct, frozen=True, array_like=True):
    """A board's leader from seq ``seq`` on (None: nobody, all were retired) and the leader it replaced."""

    seq: int
    artifact_id: str | None
    value: int | float | None
    previous: str | None


class Boards:
    """Leaderboard state: per board its leads (newest last) and its live candidates (id -> (value, seq))."""

    __slots__ = ("leads", "live", "seen", "boards_of")

    def __init__(self, leads: dict[BoardKey, list[Lead]] | None = None,
                 live: dict[BoardKey, dict[str, tuple[int | float, int]]] | None = None,
                 seen: set[str] | None = None):
        self.leads: dict[BoardKey, list[Lead]] = {} if leads is None else leads
        self.live: dict[BoardKey, dict[str, tuple[int | float, int]]] = {} if live is None else live
        # Every artifact id recorded so far: a repeated id carries nothing new, as in the catalogue.
        self.seen: set[str] = set() if seen is None else seen
        # Derived from ``live``: the boards each live artifact stands on, so a retirement finds them.
        self.boards_of: dict[str, list[BoardKey]] = {}
        for key, cands in self.live.items():
            for aid in cands:
                self.boards_of.setdefault(aid, []).append(key)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Boards) and self.leads == other.leads and self.live == other.live
                and self.seen == other.seen)

    def __repr__(self) -> str:
        return f"Boards({self.leads!r})"

    def leader(self, project_id: str | None, kind: str, metric: str) -> Lead | None:
        """The current lead of one board; None if no live artifact of that kind has the metric."""
        changes = self.leads.get((project_id, kind, metric))
        return changes[-1] if changes and changes[-1].artifact_id is not None else None

    def history(self, project_id: str | None, kind: str, metric: str) -> list[Lead]:
        """Every change of leader of one board, oldest first."""
        return list(self.leads.get((project_id, kind, metric), ()))

    def boards(self) -> list[BoardKey]:
        """The boards that have a leader now, sorted (None project first)."""
        led = [k for k, changes in self.leads.items() if changes[-1].artifact_id is not None]
        return sorted(led, key=lambda k: ("" if k[0] is None else "\0" + k[0], k[1], k[2]))


_codec_type = tuple[list[tuple[str | None, str, str, list[Lead], list[tuple[str, int | float, int]]]], list[str]]
_decoder = msgspec.msgpack.Decoder(_codec_type)


class Leaderboard:
    """Leaders per (project, kind, metric); ``modes`` names the metrics ranked ``min`` (others use ``default``)."""

    # 2: retired and purged artifacts leave their boards, and a tie goes to the newer artifact (as best()).
    version = 2

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

    def _minimises(self, metric: str) -> bool:
        return self.modes.get(metric, self.default) == "min"

    def apply(self, state: Boards, event: "LedgerEvent") -> Boards:
        """Let an artifact's metrics challenge its boards' leaders; a retired leader hands over to the next best."""
        ev = event.event
        if isinstance(ev, ArtifactRecorded):
            self._recorded(state, event.seq, ev)
        elif isinstance(ev, (Retired, Purged)):
            self._left(state, event.seq, ev.artifact_id)
        return state

    def _recorded(self, state: Boards, seq: int, ev: ArtifactRecorded) -> None:
        aid = ev.artifact_id
        if aid in state.seen:
            return
        state.seen.add(aid)
        if not ev.metrics:
            return
        on = state.boards_of[aid] = []
        for metric, value in ev.metrics.items():
            key = (ev.project_id, ev.kind, metric)
            on.append(key)
            state.live.setdefault(key, {})[aid] = (value, seq)
            changes = state.leads.setdefault(key, [])
            best = changes[-1] if changes else None
            if best is None or best.value is None:
                changes.append(Lead(seq, aid, value, None))
                continue
            # Newer wins ties, as best() ranks them.
            wins = value <= best.value if self._minimises(metric) else value >= best.value
            if wins:
                changes.append(Lead(seq, aid, value, best.artifact_id))

    def _left(self, state: Boards, seq: int, aid: str) -> None:
        for key in state.boards_of.pop(aid, ()):
            cands = state.live[key]
            del cands[aid]
            changes = state.leads[key]
            if changes[-1].artifact_id != aid:
                continue
            if not cands:
                del state.live[key]
                changes.append(Lead(seq, None, None, aid))
                continue
            # The best remaining value, the newest among equals.
            if self._minimises(key[2]):
                nxt = min(cands.items(), key=lambda it: (it[1][0], -it[1][1]))
            else:
                nxt = max(cands.items(), key=lambda it: (it[1][0], it[1][1]))
            changes.append(Lead(seq, nxt[0], nxt[1][0], aid))

    def apply_batch(self, state: Boards, events: Sequence["LedgerEvent"]) -> Boards:
        """The same as applying ``events`` one by one."""
        for e in events:
            state = self.apply(state, e)
        return state

    def encode(self, state: Boards) -> bytes:
        """msgpack of ([project, kind, metric, leads, live candidates] rows, recorded ids)."""
        rows = []
        for k, v in state.leads.items():
            cands = state.live.get(k, {})
            rows.append((*k, v, [(aid, val, s) for aid, (val, s) in cands.items()]))
        return msgspec.msgpack.encode((rows, sorted(state.seen)))

    def decode(self, data: bytes) -> Boards:
        """The inverse of ``encode``."""
        leads: dict[BoardKey, list[Lead]] = {}
        live: dict[BoardKey, dict[str, tuple[int | float, int]]] = {}
        rows, seen = _decoder.decode(data)
        for p, k, m, board_leads, cands in rows:
            leads[(p, k, m)] = board_leads
            if cands:
                live[(p, k, m)] = {aid: (val, s) for aid, val, s in cands}
        return Boards(leads, live, set(seen))
