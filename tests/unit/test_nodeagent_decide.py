"""The node agent's pure decision: apply, refuse each bad request, restore on every path, freeze."""

from __future__ import annotations

import math

import pytest

from exporter.pods.devices import Allocation
from nodeagent import wire
from nodeagent.decide import (
    AgentState,
    Apply,
    Bounds,
    Decision,
    GpuAsk,
    GpuFacts,
    Holdings,
    Pod,
    Read,
    Refuse,
    Restore,
    decide,
    expire,
    forget,
    holdings,
    restore_all,
)
from nodeagent.wire import Malformed, NoRequest, parse_request
from powercap import metrics

G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4111-8111-111111111111"
POD = Pod("inference", "llama-0", "uid-0")
OTHER = Pod("inference", "llama-1", "uid-1")
CLOCKS = (210, 600, 990, 1410, 1980)
GPUS = {u: GpuFacts(u, 200.0, 700.0, 700.0, CLOCKS, 1980.0) for u in (G0, G1)}
BOUNDS = Bounds(stale_after_s=30.0, min_change_interval_s=2.0)
T0 = 1_700_000_000.0


def held(**pods: tuple[str, ...]) -> Holdings:
    by_name = {"llama_0": POD, "llama_1": OTHER}
    return Holdings(exclusive={by_name[name].key: frozenset(uuids) for name, uuids in pods.items()})


def ask(value: float, uuid: str = G0, actuator: str = "power") -> GpuAsk:
    return GpuAsk(uuid, actuator, value)


def read(stamp: float, *asks: GpuAsk, pod: Pod = POD) -> Read:
    return Read(pod, tuple(asks), stamp)


def run(
    state: AgentState,
    now: float,
    *reads: Read,
    kubelet: Holdings | None = None,
    not_allowed: tuple[Pod, ...] = (),
    bounds: Bounds = BOUNDS,
) -> Decision:
    view = kubelet if kubelet is not None else held(llama_0=(G0,))
    return decide(state, now, view, reads, not_allowed, GPUS, bounds)


def capped(at: float = 600.0) -> AgentState:
    d = run(AgentState(), T0, read(T0, ask(at)))
    assert d.actions == (Apply(G0, POD, "power", at, None),)
    return d.state


def only(d: Decision) -> object:
    assert len(d.actions) == 1, d.actions
    return d.actions[0]


def test_a_request_within_range_for_a_held_gpu_is_applied() -> None:
    d = run(AgentState(), T0, read(T0, ask(600.0)))
    assert d.actions == (Apply(G0, POD, "power", 600.0, None),)
    assert d.actions[0].reason == "lowered"  # type: ignore[union-attr]
    assert d.state.controls[G0].setpoint == 600.0
    # The same request again (read faster than the sidecar decides) changes nothing.
    again = run(d.state, T0 + 1, read(T0, ask(600.0)))
    assert again.actions == ()


def test_a_raise_applies_at_once_and_a_lowering_waits_the_minimum_interval() -> None:
    state = capped(600.0)
    quick_lower = run(state, T0 + 1, read(T0 + 1, ask(550.0)))
    assert only(quick_lower) == Refuse(POD, G0, "too_frequent", quick_lower.actions[0].detail)  # type: ignore[union-attr]
    raise_ = run(state, T0 + 1, read(T0 + 1, ask(650.0)))
    assert raise_.actions == (Apply(G0, POD, "power", 650.0, 600.0),)
    later = run(quick_lower.state, T0 + 3, read(T0 + 3, ask(550.0)))
    assert later.actions == (Apply(G0, POD, "power", 550.0, 600.0),)


@pytest.mark.parametrize(
    ("the_read", "kubelet", "reason"),
    [
        (read(T0, ask(600.0, G1)), held(llama_0=(G0,)), "foreign_gpu"),
        (read(T0, ask(600.0)), held(llama_1=(G0,)), "foreign_gpu"),
        (read(T0, ask(600.0, "GPU-99999999-9999-4999-8999-999999999999")), None, "foreign_gpu"),
        (read(T0, ask(150.0)), None, "out_of_range"),
        (read(T0, ask(900.0)), None, "out_of_range"),
        (read(T0, ask(100.0, actuator="clocks")), None, "out_of_range"),
        (read(T0, ask(math.nan)), None, "out_of_range"),
        (Read(POD, (ask(600.0),), None), None, "malformed"),
        (Read(POD, malformed="unexpected line"), None, "malformed"),
        (read(T0 + 60, ask(600.0)), None, "malformed"),
        (read(T0 - 31, ask(600.0)), None, "stale"),
    ],
    ids=[
        "gpu-of-the-node-not-held",
        "gpu-another-pod-holds",
        "gpu-not-on-the-node",
        "below-the-gpu-minimum",
        "above-the-gpu-maximum",
        "clock-below-the-lowest",
        "nan",
        "no-timestamp",
        "unparseable",
        "stamped-in-the-future",
        "older-than-the-window",
    ],
)
def test_each_bad_request_is_refused_and_nothing_applied(
    the_read: Read, kubelet: Holdings | None, reason: str
) -> None:
    d = run(AgentState(), T0, the_read, kubelet=kubelet)
    refusal = only(d)
    assert isinstance(refusal, Refuse) and refusal.reason == reason and refusal.detail
    assert d.state.controls == {}


def test_a_time_sliced_or_mig_share_is_refused_as_shared() -> None:
    view = holdings(
        [
            Allocation("inference", "llama-0", "vllm", "nvidia.com/gpu", f"{G0}::1"),
            Allocation("inference", "llama-1", "vllm", "nvidia.com/gpu", f"{G0}::2"),
        ]
    )
    d = run(AgentState(), T0, read(T0, ask(600.0)), kubelet=view)
    assert isinstance(only(d), Refuse) and d.actions[0].reason == "shared_gpu"  # type: ignore[union-attr]


def test_two_pods_listed_on_one_board_share_it() -> None:
    view = holdings(
        [
            Allocation("inference", "llama-0", "vllm", "nvidia.com/gpu", G0),
            Allocation("inference", "llama-1", "vllm", "nvidia.com/gpu", G0),
            Allocation("inference", "llama-1", "vllm", "nvidia.com/gpu", G1),
            Allocation("inference", "llama-1", "vllm", "example.com/fpga", "fpga-0"),
        ]
    )
    assert view.exclusive == {OTHER.key: frozenset({G1})}
    assert view.shared == {POD.key: frozenset({G0}), OTHER.key: frozenset({G0})}


def test_a_replayed_request_is_refused_once() -> None:
    state = run(capped(600.0), T0 + 5, read(T0 + 5, ask(600.0))).state
    replay = run(state, T0 + 6, read(T0, ask(500.0)))
    assert isinstance(only(replay), Refuse) and replay.actions[0].reason == "replayed"  # type: ignore[union-attr]
    assert replay.state.controls[G0].setpoint == 600.0
    # Served again and again: counted once, not once per poll.
    assert run(replay.state, T0 + 7, read(T0, ask(500.0))).actions == ()


def test_not_opted_in_namespaces_are_refused_once_and_never_applied() -> None:
    d = run(AgentState(), T0, not_allowed=(POD,))
    assert isinstance(only(d), Refuse) and d.actions[0].reason == "not_opted_in"  # type: ignore[union-attr]
    assert run(d.state, T0 + 1, not_allowed=(POD,)).actions == ()


def test_restore_when_the_pod_is_gone() -> None:
    d = run(capped(), T0 + 1, kubelet=Holdings())
    assert d.actions == (Restore(G0, POD, "pod_gone"),)
    assert d.state.controls == {}


def test_restore_when_the_pod_no_longer_opts_in() -> None:
    d = run(capped(), T0 + 1)  # still holds the GPU, but is not among the opted-in reads any more
    assert d.actions == (Restore(G0, POD, "opted_out"),)


def test_restore_when_a_new_pod_of_the_same_name_takes_the_gpu() -> None:
    reborn = Pod(POD.namespace, POD.name, "uid-new")
    d = run(capped(), T0 + 3, read(T0 + 3, ask(600.0), pod=reborn))
    assert d.actions[0] == Restore(G0, POD, "pod_replaced")


def test_restore_when_the_request_goes_stale() -> None:
    state = capped()
    failing = Read(POD, error="connection refused")
    assert run(state, T0 + 30, failing).actions == ()
    d = run(state, T0 + 30.5, failing)
    assert d.actions == (Restore(G0, POD, "stale_request"),)
    # The watchdog's check alone does the same, reading nothing.
    assert expire(state, T0 + 30.5, BOUNDS).actions == (Restore(G0, POD, "stale_request"),)
    assert expire(state, T0 + 29, BOUNDS).actions == ()


def test_a_refused_request_never_keeps_a_cap_alive() -> None:
    state = capped()
    for t in range(1, 31, 2):
        state = run(state, T0 + t, read(T0 + t, ask(100.0))).state  # out of range every time
    assert run(state, T0 + 31, read(T0 + 31, ask(100.0))).actions[-1] == Restore(G0, POD, "stale_request")


def test_asking_for_the_original_or_more_restores() -> None:
    d = run(capped(), T0 + 1, read(T0 + 1, ask(700.0)))
    assert d.actions == (Restore(G0, POD, "no_cap_requested"),)
    assert run(AgentState(), T0, read(T0, ask(700.0))).actions == ()


def test_a_gpu_no_longer_asked_for_is_restored() -> None:
    d = run(capped(), T0 + 1, read(T0 + 1))
    assert d.actions == (Restore(G0, POD, "request_withdrawn"),)


def test_changing_actuator_restores_first() -> None:
    d = run(capped(), T0 + 3, read(T0 + 3, ask(990.0, actuator="clocks")))
    assert d.actions == (Restore(G0, POD, "actuator_changed"), Apply(G0, POD, "clocks", 990.0, None))


def test_clock_requests_at_the_maximum_mean_unlocked() -> None:
    state = run(AgentState(), T0, read(T0, ask(990.0, actuator="clocks"))).state
    d = run(state, T0 + 1, read(T0 + 1, ask(1980.0, actuator="clocks")))
    assert d.actions == (Restore(G0, POD, "no_cap_requested"),)


def test_the_operator_floor_bounds_every_request() -> None:
    floor = Bounds(floor_w=450.0)
    d = run(AgentState(), T0, read(T0, ask(400.0)), bounds=floor)
    assert isinstance(only(d), Refuse) and "450" in d.actions[0].detail  # type: ignore[union-attr]
    assert run(AgentState(), T0, read(T0, ask(450.0)), bounds=floor).actions[0] == Apply(
        G0, POD, "power", 450.0, None
    )


def test_a_gpu_moves_to_another_pod_only_after_its_restore() -> None:
    both = held(llama_1=(G0,))
    d = run(capped(), T0 + 3, read(T0 + 3, ask(650.0), pod=OTHER), kubelet=both)
    assert d.actions == (Restore(G0, POD, "pod_gone"), Apply(G0, OTHER, "power", 650.0, None))


def test_frozen_without_the_kubelet_holds_last_known_good_and_still_restores_when_stale() -> None:
    state = capped(600.0)
    frozen = decide(state, T0 + 3, None, [read(T0 + 3, ask(500.0))], [], GPUS, BOUNDS)
    assert frozen.frozen and frozen.actions == ()
    assert frozen.state.controls[G0].setpoint == 600.0, "nothing new while ownership cannot be checked"
    confirmed = decide(frozen.state, T0 + 20, None, [read(T0 + 20, ask(600.0))], [], GPUS, BOUNDS)
    assert confirmed.actions == () and confirmed.state.controls[G0].confirmed_s == T0 + 20
    stale = decide(confirmed.state, T0 + 51, None, [Read(POD, error="gone")], [], GPUS, BOUNDS)
    assert stale.actions == (Restore(G0, POD, "stale_request"),)


def test_shutdown_restores_everything_and_forget_drops_a_failed_action() -> None:
    state = capped()
    d = restore_all(state)
    assert d.actions == (Restore(G0, POD, "shutdown"),) and d.state.controls == {}
    assert forget(state, G0).controls == {}


def test_bounds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="stale_after_s"):
        Bounds(stale_after_s=0.0)
    with pytest.raises(ValueError, match="min_change_interval_s"):
        Bounds(min_change_interval_s=math.inf)


# --- the wire format ---

PAGE = f"""# HELP eo_powercap_requested_watts Power limit this sidecar asks the node agent to put in force (W).
# TYPE eo_powercap_requested_watts gauge
eo_powercap_requested_watts{{uuid="{G0}"}} 650.0
# TYPE eo_powercap_requested_sm_clock_hertz gauge
eo_powercap_requested_sm_clock_hertz{{uuid="{G1}"}} 1.41e+09
# TYPE eo_powercap_request_timestamp_seconds gauge
eo_powercap_request_timestamp_seconds 1.7000000001e+09
eo_powercap_target_watts{{uuid="{G0}"}} 650.0
"""


def test_the_wire_format_parses_strictly() -> None:
    request = parse_request(PAGE)
    assert request.asks == (GpuAsk(G0, "power", 650.0), GpuAsk(G1, "clocks", 1410.0))
    assert request.timestamp_s == 1_700_000_000.1


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.replace("650.0", "NaN"),
        lambda p: p.replace("650.0", "-1"),
        lambda p: p.replace("650.0", "many"),
        lambda p: p.replace(G0, "GPU-0"),
        lambda p: p.replace(G0, "MIG-" + G0[4:]),
        lambda p: p.replace(f'{{uuid="{G0}"}}', f'{{uuid="{G0}",x="y"}}'),
        lambda p: p + f'eo_powercap_requested_watts{{uuid="{G0}"}} 600.0\n',
        lambda p: p + "eo_powercap_request_timestamp_seconds 1.8e+09\n",
        lambda p: p.replace("eo_powercap_request_timestamp_seconds 1.7000000001e+09\n", ""),
        lambda p: p.replace("1.7000000001e+09", "+Inf"),
        lambda p: (
            p
            + "".join(
                f'eo_powercap_requested_watts{{uuid="GPU-{i:08d}-0000-4000-8000-000000000000"}} 600\n'
                for i in range(20)
            )
        ),
    ],
    ids=[
        "nan",
        "negative",
        "not-a-number",
        "bad-uuid",
        "mig-uuid",
        "extra-label",
        "gpu-twice-in-one-family",
        "two-timestamps",
        "no-timestamp",
        "infinite-timestamp",
        "too-many-gpus",
    ],
)
def test_the_wire_format_refuses_anything_else(change: object) -> None:
    with pytest.raises(Malformed):
        parse_request(change(PAGE))  # type: ignore[operator]


def test_a_page_without_a_request_is_no_request() -> None:
    with pytest.raises(NoRequest):
        parse_request('eo_powercap_target_watts{uuid="x"} 1\neo_powercap_requested_watts_other 3\n')


def test_the_wire_names_are_the_sidecars() -> None:
    assert (wire.REQUEST_WATTS, wire.REQUEST_CLOCK, wire.REQUEST_TIMESTAMP) == (
        metrics.REQUEST_WATTS,
        metrics.REQUEST_CLOCK,
        metrics.REQUEST_TIMESTAMP,
    )


# --- both actuators of one GPU: a clock lock with a power limit beside it (the budget guard) ---


def both(mhz: float, watts: float | None, uuid: str = G0) -> GpuAsk:
    return GpuAsk(uuid, "clocks", mhz, watts)


def test_a_gpu_in_both_families_is_one_clock_ask_with_its_power_limit() -> None:
    page = PAGE.replace(G1, G0)  # G0 in both families: before, refused as asked for twice
    assert parse_request(page).asks == (both(1410.0, 650.0),)


def test_both_actuators_are_applied_together_and_each_change_counts() -> None:
    d = run(AgentState(), T0, read(T0, both(1410.0, 450.0)))
    assert d.actions == (Apply(G0, POD, "clocks", 1410.0, None, 450.0, None),)
    assert d.state.controls[G0].budget_w == 450.0
    # The same request again confirms; the budget alone raised applies at once (the safe direction).
    assert run(d.state, T0 + 1, read(T0 + 1, both(1410.0, 450.0))).actions == ()
    raised = run(d.state, T0 + 1, read(T0 + 1, both(1410.0, 500.0)))
    assert raised.actions == (Apply(G0, POD, "clocks", 1410.0, 1410.0, 500.0, 450.0),)
    assert raised.actions[0].reason == "raised"  # type: ignore[union-attr]
    # The budget alone lowered is a lowering: the minimum change interval holds it back.
    lowered = run(d.state, T0 + 1, read(T0 + 1, both(1410.0, 400.0)))
    assert only(lowered).reason == "too_frequent"  # type: ignore[attr-defined]


def test_clocks_at_the_top_with_a_budget_keep_the_budget_and_without_one_restore() -> None:
    d = run(AgentState(), T0, read(T0, both(1980.0, 450.0)))
    assert d.actions == (Apply(G0, POD, "clocks", 1980.0, None, 450.0, None),)
    # The budget at the original (or above) is "no cap": with clocks at the top, the GPU is restored.
    free = run(d.state, T0 + 3, read(T0 + 3, both(1980.0, 700.0)))
    assert free.actions == (Restore(G0, POD, "no_cap_requested"),)


@pytest.mark.parametrize("watts", [150.0, 900.0, math.nan])
def test_a_budget_outside_the_range_refuses_the_ask(watts: float) -> None:
    d = run(AgentState(), T0, read(T0, both(1410.0, watts)))
    assert only(d).reason == "out_of_range"  # type: ignore[attr-defined]
    assert d.state.controls == {}


def test_frozen_keeps_a_clock_and_budget_the_pod_still_confirms() -> None:
    d = run(AgentState(), T0, read(T0, both(1410.0, 450.0)))
    frozen = decide(d.state, T0 + 20, None, [read(T0 + 20, both(1410.0, 450.0))], (), GPUS, BOUNDS)
    assert frozen.state.controls[G0].confirmed_s == T0 + 20
    other = decide(d.state, T0 + 20, None, [read(T0 + 20, both(1410.0, 400.0))], (), GPUS, BOUNDS)
    assert other.state.controls[G0].confirmed_s == T0, "a different budget is not a confirmation"
