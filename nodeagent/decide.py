"""What the node agent does with what it sees: apply a request, refuse it, or restore a GPU. Pure.

Each cycle takes the time (unix seconds: the agent and the sidecars share the node's clock), the kubelet's
view of which pod holds which GPU (``None`` when the kubelet cannot be read), the requests read from the
opted-in pods, each GPU's own range and recorded original, the operator's bounds, and the state the last
cycle returned. It returns the new state and the actions, each with a reason. The adapter
(``nodeagent.agent``) reads, calls ``decide`` and carries the actions out; a failed action is fed back
with ``forget``.

The rules, in the order they are applied:

1. **Ownership** (needs the kubelet). A GPU under control goes back to its original as soon as the pod
   that asked no longer holds it (``pod_gone``), no longer opts in (``opted_out``), or was replaced by
   a pod of the same name (``pod_replaced``).
2. **Requests.** A pod's request is a set of (GPU, actuator, setpoint) with one timestamp. Refused
   (counted, nothing applied), once per distinct request: not opted in (``not_opted_in``); not a request
   (``malformed``: unparseable, a timestamp in the future); older than the last one taken from that pod
   (``replayed``); older than the staleness window (``stale``); a GPU the pod does not hold alone
   (``foreign_gpu``, or ``shared_gpu`` for a time-sliced or MIG share: a limit is per board); outside
   the GPU's range or the operator's floor (``out_of_range``); a lowering sooner than the minimum change
   interval after the last change of that GPU (``too_frequent``). A setpoint at or above the original
   means "no cap": the GPU is restored (``no_cap_requested``). Raising and restoring are never rate
   limited: they are the safe direction. A GPU the pod stops asking for is restored
   (``request_withdrawn``). A refused request never keeps a cap alive.
3. **Staleness.** A GPU whose pod has not confirmed its setting for ``stale_after_s`` is restored
   (``stale_request``): a sidecar that stops publishing, hangs, or cannot be reached. Restoring needs
   no proof of ownership, so this holds while the kubelet is unreadable too.

Without the kubelet the agent is **frozen**: it applies nothing new (ownership cannot be checked), keeps
each GPU at its last known good setting while the pod that asked still confirms it, and restores on
staleness and on shutdown as always.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from exporter.pods.devices import (
    Allocation,
    MigParent,
    Sharing,
    is_gpu_resource,
    no_mig_parents,
    parse_device_id,
)

ACTUATORS = ("power", "clocks")
PodKey = tuple[str, str]
"""(namespace, name)"""

# Restore reasons.
POD_GONE = "pod_gone"
OPTED_OUT = "opted_out"
POD_REPLACED = "pod_replaced"
STALE_REQUEST = "stale_request"
NO_CAP_REQUESTED = "no_cap_requested"
REQUEST_WITHDRAWN = "request_withdrawn"
ACTUATOR_CHANGED = "actuator_changed"
SHUTDOWN = "shutdown"
# Refusal reasons.
NOT_OPTED_IN = "not_opted_in"
MALFORMED = "malformed"
REPLAYED = "replayed"
STALE = "stale"
FOREIGN_GPU = "foreign_gpu"
SHARED_GPU = "shared_gpu"
OUT_OF_RANGE = "out_of_range"
TOO_FREQUENT = "too_frequent"
REFUSAL_REASONS = (
    NOT_OPTED_IN,
    MALFORMED,
    REPLAYED,
    STALE,
    FOREIGN_GPU,
    SHARED_GPU,
    OUT_OF_RANGE,
    TOO_FREQUENT,
)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class GpuAsk:
    """One GPU's requested setpoint, in the actuator's unit (W for power, MHz for clocks)."""

    uuid: str
    actuator: str
    value: float
    budget_w: float | None = None
    """With ``clocks``: a power limit held beside the clock lock (the sidecar's budget guard), W."""


@dataclass(frozen=True)
class Read:
    """One read of an opted-in pod's request. ``error``: no answer (it ages the request, it is not a
    refusal); ``malformed``: an answer that is not a request (refused)."""

    pod: Pod
    asks: tuple[GpuAsk, ...] = ()
    timestamp_s: float | None = None
    error: str | None = None
    malformed: str | None = None


@dataclass(frozen=True)
class Holdings:
    """Which boards each pod holds, from the kubelet's PodResources: ``exclusive`` whole and alone,
    ``shared`` a time-sliced replica, a MIG instance, or a board another pod holds too."""

    exclusive: Mapping[PodKey, frozenset[str]] = field(default_factory=dict)
    shared: Mapping[PodKey, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuFacts:
    """What a GPU allows, and the setting it had before the agent touched it."""

    uuid: str
    min_w: float
    max_w: float
    original_w: float
    clocks_mhz: tuple[int, ...]
    """Supported SM clocks, ascending."""
    max_clock_mhz: float


@dataclass(frozen=True)
class Bounds:
    """The operator's rules (``nodeagent.settings``)."""

    stale_after_s: float = 30.0
    min_change_interval_s: float = 2.0
    floor_w: float | None = None
    floor_mhz: float | None = None
    max_clock_skew_s: float = 2.0
    """A request stamped further in the future than this is malformed (one node, one clock)."""

    def __post_init__(self) -> None:
        for name in ("stale_after_s", "min_change_interval_s", "max_clock_skew_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")


@dataclass(frozen=True)
class Control:
    """A setting of the agent's in force on one GPU, for one pod."""

    pod: Pod
    actuator: str
    setpoint: float
    confirmed_s: float
    """Timestamp of the last request that asked for exactly this."""
    budget_w: float | None = None
    """A power limit in force beside a clock lock; None: the original limit."""


@dataclass(frozen=True)
class AgentState:
    controls: Mapping[str, Control] = field(default_factory=dict)
    last_request_s: Mapping[PodKey, float] = field(default_factory=dict)
    """The newest request timestamp taken from each pod."""
    last_change_s: Mapping[str, float] = field(default_factory=dict)
    """When each GPU was last set (for the minimum change interval)."""
    reported: frozenset[tuple[str, str, str, str, float | None]] = frozenset()
    """Refusals already reported (pod, GPU, reason, request timestamp): each is reported once."""


@dataclass(frozen=True)
class Apply:
    uuid: str
    pod: Pod
    actuator: str
    setpoint: float
    previous: float | None
    """The setpoint it replaces; None when the GPU was at its original."""
    budget_w: float | None = None
    """With ``clocks``: the power limit to hold beside the lock; None puts the original limit back."""
    previous_budget_w: float | None = None

    @property
    def reason(self) -> str:
        return (
            "lowered"
            if _lowers(self.previous, self.setpoint, self.previous_budget_w, self.budget_w)
            else "raised"
        )


@dataclass(frozen=True)
class Restore:
    uuid: str
    pod: Pod
    reason: str


@dataclass(frozen=True)
class Refuse:
    pod: Pod
    uuid: str
    """"" when the refusal is about the whole request."""
    reason: str
    detail: str


Action = Apply | Restore | Refuse


@dataclass(frozen=True)
class Decision:
    state: AgentState
    actions: tuple[Action, ...]
    frozen: bool = False


def holdings(allocations: Iterable[Allocation], mig_parent: MigParent = no_mig_parents) -> Holdings:
    """The kubelet's allocations as boards per pod. A board two pods hold is shared for both."""
    holders: dict[str, set[PodKey]] = {}
    whole: dict[PodKey, set[str]] = {}
    part: dict[PodKey, set[str]] = {}
    for a in allocations:
        if not is_gpu_resource(a.resource_name):
            continue
        share = parse_device_id(a.device_id, a.resource_name, mig_parent)
        if share is None:
            continue
        key = (a.namespace, a.pod)
        holders.setdefault(share.board_uuid, set()).add(key)
        (whole if share.sharing is Sharing.EXCLUSIVE else part).setdefault(key, set()).add(share.board_uuid)
    for board, keys in holders.items():
        if len(keys) > 1:
            for key in keys:
                whole.get(key, set()).discard(board)
                part.setdefault(key, set()).add(board)
    return Holdings(
        exclusive={k: frozenset(v) for k, v in whole.items() if v},
        shared={k: frozenset(v) for k, v in part.items() if v},
    )


class _Cycle:
    """The mutable working copy of one ``decide`` call."""

    def __init__(self, state: AgentState, now_s: float, bounds: Bounds) -> None:
        self.now_s = now_s
        self.bounds = bounds
        self.controls = dict(state.controls)
        self.last_request_s = dict(state.last_request_s)
        self.last_change_s = dict(state.last_change_s)
        self.previously_reported = state.reported
        self.reported: set[tuple[str, str, str, str, float | None]] = set()
        self.actions: list[Action] = []

    def restore(self, uuid: str, reason: str) -> None:
        control = self.controls.pop(uuid, None)
        if control is not None:
            self.actions.append(Restore(uuid, control.pod, reason))

    def refuse(self, pod: Pod, uuid: str, reason: str, detail: str, stamp: float | None) -> None:
        # The detail is left out: it may name the time ("3 s old"), and one request is reported once.
        key = (str(pod), uuid, reason, "", stamp)
        self.reported.add(key)
        if key not in self.previously_reported:
            self.actions.append(Refuse(pod, uuid, reason, detail))

    def expire(self) -> None:
        for uuid, control in list(self.controls.items()):
            if self.now_s - control.confirmed_s > self.bounds.stale_after_s:
                self.restore(uuid, STALE_REQUEST)

    def result(self, frozen: bool, keep_pods: Iterable[PodKey]) -> Decision:
        keep = set(keep_pods) | {c.pod.key for c in self.controls.values()}
        state = AgentState(
            controls=self.controls,
            last_request_s={k: v for k, v in self.last_request_s.items() if k in keep},
            last_change_s=self.last_change_s,
            reported=frozenset(self.reported),
        )
        return Decision(state, tuple(self.actions), frozen)


def decide(
    state: AgentState,
    now_s: float,
    held: Holdings | None,
    reads: Sequence[Read],
    not_allowed: Sequence[Pod],
    gpus: Mapping[str, GpuFacts],
    bounds: Bounds,
) -> Decision:
    """One cycle. ``reads``: the opted-in pods of the namespaces the operator lists; ``not_allowed``:
    pods that ask from namespaces the operator does not list (refused, never read)."""
    cycle = _Cycle(state, now_s, bounds)
    frozen = held is None
    by_pod = {r.pod.key: r for r in reads}
    for pod in not_allowed:
        cycle.refuse(pod, "", NOT_OPTED_IN, "its namespace is not in the agent's --namespaces", None)
    if held is not None:
        for uuid, control in list(cycle.controls.items()):
            read = by_pod.get(control.pod.key)
            if uuid not in held.exclusive.get(control.pod.key, frozenset()):
                cycle.restore(uuid, POD_GONE)
            elif read is None:
                cycle.restore(uuid, OPTED_OUT)
            elif read.pod.uid and control.pod.uid and read.pod.uid != control.pod.uid:
                cycle.restore(uuid, POD_REPLACED)
    for read in reads:
        _take(cycle, read, held, gpus)
    cycle.expire()
    return cycle.result(frozen, by_pod)


def expire(state: AgentState, now_s: float, bounds: Bounds) -> Decision:
    """Only the staleness rule: what the watchdog runs between cycles (it reads nothing)."""
    cycle = _Cycle(state, now_s, bounds)
    cycle.reported = set(state.reported)
    cycle.expire()
    return cycle.result(False, state.last_request_s)


def restore_all(state: AgentState, reason: str = SHUTDOWN) -> Decision:
    """Every GPU under control back to its original (shutdown)."""
    actions = tuple(Restore(uuid, c.pod, reason) for uuid, c in state.controls.items())
    return Decision(replace(state, controls={}), actions)


def forget(state: AgentState, uuid: str) -> AgentState:
    """The adapter could not carry out an action on ``uuid``: no setting of ours is taken as in force."""
    controls = {k: v for k, v in state.controls.items() if k != uuid}
    return replace(state, controls=controls)


def _take(cycle: _Cycle, read: Read, held: Holdings | None, gpus: Mapping[str, GpuFacts]) -> None:
    """Take one pod's read: refresh, refuse or turn into actions."""
    pod, key = read.pod, read.pod.key
    if read.error is not None:
        return  # no answer: the request ages toward stale-after, nothing is refused
    stamp = read.timestamp_s
    if read.malformed is not None or stamp is None:
        cycle.refuse(pod, "", MALFORMED, read.malformed or "no request timestamp", stamp)
        return
    if stamp > cycle.now_s + cycle.bounds.max_clock_skew_s:
        cycle.refuse(pod, "", MALFORMED, f"request stamped {stamp - cycle.now_s:.1f} s in the future", stamp)
        return
    last = cycle.last_request_s.get(key)
    if last is not None and stamp < last:
        cycle.refuse(pod, "", REPLAYED, f"request stamped {last - stamp:.1f} s before the last one", stamp)
        return
    if last is not None and stamp == last:
        return  # the same request again (read faster than the sidecar decides): nothing new
    if cycle.now_s - stamp > cycle.bounds.stale_after_s:
        cycle.refuse(pod, "", STALE, f"request is {cycle.now_s - stamp:.0f} s old", stamp)
        return
    cycle.last_request_s[key] = stamp
    asked = {a.uuid: a for a in read.asks}
    if held is None:
        # Frozen: ownership cannot be checked, so nothing changes; a pod still asking for exactly what
        # is in force keeps it (last known good).
        for uuid, control in list(cycle.controls.items()):
            ask = asked.get(uuid)
            if (
                control.pod.key == key
                and ask is not None
                and (ask.actuator, ask.value) == (control.actuator, control.setpoint)
                and _budget(ask, gpus.get(uuid)) == control.budget_w
            ):
                cycle.controls[uuid] = replace(control, confirmed_s=stamp)
        return
    for uuid, control in list(cycle.controls.items()):
        if control.pod.key == key and uuid not in asked:
            cycle.restore(uuid, REQUEST_WITHDRAWN)
    for ask in read.asks:
        _take_ask(cycle, pod, ask, stamp, held, gpus)


def _take_ask(
    cycle: _Cycle, pod: Pod, ask: GpuAsk, stamp: float, held: Holdings, gpus: Mapping[str, GpuFacts]
) -> None:
    uuid = ask.uuid
    facts = gpus.get(uuid)
    current = cycle.controls.get(uuid)
    if uuid in held.shared.get(pod.key, frozenset()):
        cycle.refuse(
            pod, uuid, SHARED_GPU, "a limit is per board: not on a time-sliced, MIG or shared GPU", stamp
        )
        return
    if facts is None or uuid not in held.exclusive.get(pod.key, frozenset()):
        cycle.refuse(pod, uuid, FOREIGN_GPU, "the kubelet does not give this GPU to the pod", stamp)
        return
    if current is not None and current.pod.key != pod.key:
        cycle.refuse(pod, uuid, FOREIGN_GPU, f"the GPU is under control for {current.pod}", stamp)
        return
    if ask.actuator == "power":
        low = max(facts.min_w, cycle.bounds.floor_w or 0.0)
        high, ceiling, unit = facts.max_w, facts.original_w, "W"
    else:
        low = max(float(facts.clocks_mhz[0]) if facts.clocks_mhz else 0.0, cycle.bounds.floor_mhz or 0.0)
        high, ceiling, unit = facts.max_clock_mhz, facts.max_clock_mhz, "MHz"
    if not (math.isfinite(ask.value) and low <= ask.value <= high):
        cycle.refuse(
            pod, uuid, OUT_OF_RANGE, f"{ask.value:g} {unit} is outside [{low:g}, {high:g}] {unit}", stamp
        )
        return
    if ask.budget_w is not None:
        low_w = max(facts.min_w, cycle.bounds.floor_w or 0.0)
        if ask.actuator != "clocks" or not (
            math.isfinite(ask.budget_w) and low_w <= ask.budget_w <= facts.max_w
        ):
            cycle.refuse(
                pod, uuid, OUT_OF_RANGE,
                f"power limit {ask.budget_w:g} W beside the clocks is outside [{low_w:g}, {facts.max_w:g}] W",
                stamp,
            )  # fmt: skip
            return
    budget = _budget(ask, facts)
    if ask.value >= ceiling and budget is None:
        cycle.restore(uuid, NO_CAP_REQUESTED)
        return
    if current is not None and current.actuator != ask.actuator:
        cycle.restore(uuid, ACTUATOR_CHANGED)
        current = None
    if current is not None and ask.value == current.setpoint and budget == current.budget_w:
        cycle.controls[uuid] = replace(current, confirmed_s=stamp)
        return
    lowering = current is None or _lowers(current.setpoint, ask.value, current.budget_w, budget)
    since = cycle.now_s - cycle.last_change_s.get(uuid, -math.inf)
    if lowering and since < cycle.bounds.min_change_interval_s:
        cycle.refuse(
            pod,
            uuid,
            TOO_FREQUENT,
            f"{since:.1f} s after the last change (at least {cycle.bounds.min_change_interval_s:g} s)",
            stamp,
        )
        return
    cycle.controls[uuid] = Control(pod, ask.actuator, ask.value, stamp, budget)
    cycle.last_change_s[uuid] = cycle.now_s
    cycle.actions.append(
        Apply(
            uuid, pod, ask.actuator, ask.value, current.setpoint if current else None, budget,
            current.budget_w if current else None,
        )
    )  # fmt: skip


def _budget(ask: GpuAsk, facts: GpuFacts | None) -> float | None:
    """The power limit an ask holds beside its clocks; None when it asks for none, or for the original
    or more (no cap: the original limit stays)."""
    if ask.budget_w is None or facts is None or ask.budget_w >= facts.original_w:
        return None
    return ask.budget_w


def _lowers(
    before: float | None, after: float, budget_before: float | None, budget_after: float | None
) -> bool:
    """A change that lowers the setpoint or the budget beside it (None: no cap, the highest)."""
    if before is None or after < before:
        return True
    return budget_after is not None and (budget_before is None or budget_after < budget_before)
