"""The node agent in-process against a real PodResources gRPC server, real HTTP request pages (and a real
sidecar in ``--apply-via agent``) and simulated GPUs: apply, refuse each bad request, restore on every
path, freeze without the kubelet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import from_values
from devices.base import GpuLost
from devices.simulated import SimulatedGpu
from exporter.pods.accounting import PodKey
from exporter.pods.kubelet import PodResourcesClient
from exporter.pods.owners import PodMeta, Workload
from exporter.pods.sampler import StaticPodMetadata
from nodeagent.agent import start_node_agent
from nodeagent.requests import OPT_IN_ANNOTATION, PORT_ANNOTATION
from nodeagent.settings import StartupRefused
from powercap.latency import LatencySample
from powercap.persist import GpuLock, GpuRecord, StateStore
from powercap.settings import Settings as PowercapSettings
from powercap.sidecar import start_powercap
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.nodeagent import T0, AgentRig, agent_rig, agent_settings, sim_uuid
from tests.support.pods import start_kubelet
from tests.support.powercap import VllmStateFeed

G0, G1 = sim_uuid(0), sim_uuid(1)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[AgentRig]:
    with agent_rig(tmp_path) as r:
        yield r


def capped(rig: AgentRig, watts: float = 600.0) -> None:
    rig.add_pod("llama-0", [G0])
    rig.ask("llama-0", {G0: watts})
    rig.cycle()
    assert rig.limit_w() == watts


def test_a_held_gpu_gets_the_requested_limit_counted_and_recorded(rig: AgentRig, tmp_path: Path) -> None:
    capped(rig, 600.0)
    assert rig.sample("eo_node_agent_changes_total", uuid=G0, reason="lowered") == 1.0
    assert rig.sample("eo_node_agent_setpoint_watts", uuid=G0) == 600.0
    labels = {"uuid": G0, "namespace": "inference", "pod": "llama-0", "actuator": "power"}
    assert rig.sample("eo_node_agent_controlled", **labels) == 1.0
    assert rig.sample("eo_node_agent_kubelet_up") == 1.0
    assert rig.events.reasons("llama-0") == ["PowerCapLowered"]
    record = json.loads((tmp_path / "state" / f"{G0}.json").read_text())
    assert (record["status"], record["original_power_limit_mw"], record["pod"]) == (
        "controlling",
        700_000,
        "inference/llama-0",
    )
    assert rig.gpus[1].set_calls == [("power_limit_mw", 700_000)], "only the no-op permission probe"


def test_a_real_sidecar_through_the_agent_caps_its_gpu_without_privilege(
    rig: AgentRig, tmp_path: Path
) -> None:
    """The sidecar's own page, served by its own /metrics server, read by the agent over HTTP."""
    sidecar_view = SimulatedGpu(0, privileged=False)  # the sidecar's GPU: reads only, any setter fails
    sidecar = start_powercap(
        from_values(
            PowercapSettings,
            {"latency_target_s": 1.0, "apply_via": "agent", "settle_s": 0.0, "port": 0,
             "listen_address": "127.0.0.1", "state_dir": tmp_path / "sidecar"},
            environ={},
        ),
        [sidecar_view],
        type("Fast", (), {"read": lambda self, now: LatencySample(0.1, 10.0)})(),
        run_loop=False,
        wall_clock=rig.clock,
    )  # fmt: skip
    try:
        rig.add_pod("llama-0", [G0])
        rig.pages.pop("llama-0").stop()
        annotations = {OPT_IN_ANNOTATION: "true", PORT_ANNOTATION: str(sidecar.port)}
        meta = PodMeta(Workload("Deployment", "llama"), "127.0.0.1", annotations, {}, "uid-llama-0")
        rig.metadata.set(PodKey("inference", "llama-0"), meta)
        for _ in range(3):
            rig.clock.now += 3
            sidecar.sidecar.tick()
            rig.cycle(0)
        assert rig.limit_w() == 625.0, "three bounded steps of 25 W, each applied by the agent"
        assert sidecar_view.set_calls == []
    finally:
        sidecar.stop()
    # The sidecar is gone (its page no longer answers): the agent restores after the staleness window.
    rig.cycle(11)
    assert rig.limit_w() == 700.0
    assert rig.restores(G0, "stale_request") == 1.0


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda r: r.ask("llama-0", {G1: 600.0}), "foreign_gpu"),
        (lambda r: r.ask("llama-0", {G0: 100.0}), "out_of_range"),
        (lambda r: r.ask("llama-0", {G0: 800.0}), "out_of_range"),
        (
            lambda r: setattr(r.pages["llama-0"], "body", 'eo_powercap_requested_watts{uuid="x"} 1\n'),
            "malformed",
        ),
        (lambda r: r.ask("llama-0", {G0: 600.0}, stamp=T0 + 100), "malformed"),
        (lambda r: r.ask("llama-0", {G0: 600.0}, stamp=T0 - 60), "stale"),
    ],
    ids=["foreign-gpu", "below-range", "above-range", "malformed", "from-the-future", "stale"],
)
def test_each_bad_request_is_refused_counted_and_nothing_set(
    rig: AgentRig, setup: object, reason: str
) -> None:
    rig.add_pod("llama-0", [G0])
    setup(rig)  # type: ignore[operator]
    rig.cycle()
    rig.cycle(0)  # the same request again is not counted again
    assert rig.refusals(reason) == 1.0
    assert [g.set_calls for g in rig.gpus] == [[("power_limit_mw", 700_000)]] * 2, "nothing but the probes"
    assert rig.events.reasons("llama-0") == ["PowerCapRequestRefused"]


def test_a_pod_outside_the_listed_namespaces_is_refused_and_never_read(rig: AgentRig) -> None:
    page = rig.add_pod("llama-0", [G0], namespace="team-b")
    rig.ask("llama-0", {G0: 600.0})
    rig.cycle()
    assert rig.refusals("not_opted_in") == 1.0
    assert page.body and rig.limit_w() == 700.0
    assert rig.events.events == [], "no Event where the operator gave the agent nothing"


def test_a_pod_without_the_annotation_is_not_read_at_all(rig: AgentRig) -> None:
    rig.add_pod("llama-0", [G0], opt_in=False)
    rig.ask("llama-0", {G0: 600.0})
    rig.cycle()
    assert rig.limit_w() == 700.0
    assert sum(rig.refusals(r) for r in ("not_opted_in", "malformed", "foreign_gpu")) == 0


def test_a_replayed_request_is_refused(rig: AgentRig) -> None:
    capped(rig, 600.0)
    rig.ask("llama-0", {G0: 500.0}, stamp=T0 - 5)
    rig.cycle()
    assert rig.refusals("replayed") == 1.0
    assert rig.limit_w() == 600.0


def test_lowering_too_often_is_refused_raising_is_not(rig: AgentRig) -> None:
    capped(rig, 600.0)
    rig.ask("llama-0", {G0: 575.0})
    rig.cycle(0.5)
    assert rig.refusals("too_frequent") == 1.0 and rig.limit_w() == 600.0
    rig.ask("llama-0", {G0: 650.0})
    rig.cycle(0.5)
    assert rig.limit_w() == 650.0
    rig.ask("llama-0", {G0: 575.0})
    rig.cycle(2.0)
    assert rig.limit_w() == 575.0


def test_a_time_sliced_share_is_refused(rig: AgentRig) -> None:
    rig.add_pod("llama-0", [f"{G0}::0"], resource="nvidia.com/gpu.shared")
    rig.ask("llama-0", {G0: 600.0})
    rig.cycle()
    assert rig.refusals("shared_gpu") == 1.0 and rig.limit_w() == 700.0


def test_restore_when_the_pod_is_removed(rig: AgentRig, tmp_path: Path) -> None:
    capped(rig)
    rig.remove_pod("llama-0")
    rig.cycle()
    assert rig.limit_w() == 700.0
    assert rig.restores(G0, "pod_gone") == 1.0
    assert json.loads((tmp_path / "state" / f"{G0}.json").read_text())["status"] == "restored"
    assert rig.events.reasons("llama-0") == ["PowerCapLowered", "PowerCapRestored"]
    assert rig.sample("eo_node_agent_setpoint_watts", uuid=G0) is None, "no setpoint left published"
    GpuLock(tmp_path / "state" / "locks", G0).release()  # the agent released the GPU's lock


def test_restore_when_the_request_goes_stale_even_without_a_cycle(rig: AgentRig) -> None:
    capped(rig)
    rig.clock.now += 9
    assert rig.agent.enforce_staleness().actions == ()
    rig.clock.now += 2
    rig.agent.enforce_staleness()  # the watchdog's check: reads nothing, restores
    assert rig.limit_w() == 700.0
    assert rig.restores(G0, "stale_request") == 1.0


def test_without_the_kubelet_it_freezes_then_restores_when_stale(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        capped(rig)
        rig.agent._kubelet = PodResourcesClient(str(tmp_path / "no-kubelet.sock"), timeout_s=0.2)
        rig.ask("llama-0", {G0: 500.0})
        rig.cycle()
        assert rig.sample("eo_node_agent_frozen") == 1.0 and rig.sample("eo_node_agent_kubelet_up") == 0.0
        assert rig.limit_w() == 600.0, "frozen at the last known good: nothing new applied"
        rig.ask("llama-0", {G0: 600.0})
        rig.cycle(8)  # still confirmed by the pod that asked
        assert rig.limit_w() == 600.0
        rig.pages["llama-0"].status = 503
        rig.cycle(11)
        assert rig.limit_w() == 700.0
        assert rig.restores(G0, "stale_request") == 1.0


def test_a_direct_mode_sidecar_holding_the_lock_is_left_alone(rig: AgentRig, tmp_path: Path) -> None:
    lock = GpuLock(tmp_path / "state" / "locks", G0)
    try:
        rig.add_pod("llama-0", [G0])
        rig.ask("llama-0", {G0: 600.0})
        rig.cycle()
        assert rig.refusals("gpu_busy") == 1.0 and rig.limit_w() == 700.0
    finally:
        lock.release()


def test_a_foreign_write_makes_the_agent_step_aside(rig: AgentRig) -> None:
    capped(rig)
    rig.gpus[0].set_power_limit_mw(450_000)  # someone else
    rig.ask("llama-0", {G0: 575.0})
    rig.cycle(3)
    assert rig.limit_w() == 450.0, "never written over"
    assert "PowerCapForeignWrite" in rig.events.reasons("llama-0")
    rig.ask("llama-0", {G0: 550.0})
    rig.cycle(3)
    assert rig.limit_w() == 450.0


def test_a_gpu_error_restores_and_a_failed_restore_is_retried(rig: AgentRig) -> None:
    capped(rig)
    rig.gpus[0].inject_fault(GpuLost("fell off the bus"))
    rig.remove_pod("llama-0")
    rig.cycle()
    assert rig.sample("eo_node_agent_restore_pending") == 1.0
    rig.gpus[0].inject_fault(None)
    rig.cycle()
    assert rig.limit_w() == 700.0 and rig.sample("eo_node_agent_restore_pending") == 0.0
    assert rig.restores(G0, "pod_gone") == 1.0


def test_stop_restores_every_gpu(rig: AgentRig, tmp_path: Path) -> None:
    capped(rig)
    rig.add_pod("llama-1", [G1])
    rig.ask("llama-1", {G1: 650.0})
    rig.cycle()
    assert rig.handle.stop() is True
    assert (rig.limit_w(0), rig.limit_w(1)) == (700.0, 700.0)
    for uuid in (G0, G1):
        assert json.loads((tmp_path / "state" / f"{uuid}.json").read_text())["status"] == "restored"


def test_clock_requests_lock_and_restore_resets(rig: AgentRig) -> None:
    rig.add_pod("llama-0", [G0])
    rig.ask("llama-0", {G0: 1500.0}, actuator="clocks")
    rig.cycle()
    locked = rig.gpus[0].locked_sm_clock_mhz
    assert locked is not None and locked <= 1500
    rig.remove_pod("llama-0")
    rig.cycle()
    assert rig.gpus[0].locked_sm_clock_mhz is None


def test_at_start_it_restores_what_a_killed_run_left(tmp_path: Path) -> None:
    gpu = SimulatedGpu(0)
    gpu.set_power_limit_mw(450_000)  # left capped by a run that was SIGKILLed
    StateStore(tmp_path / "state").save(
        GpuRecord(G0, "power", 700_000, "unlocked", "controlling", pod="inference/llama-0")
    )
    server, _ = start_kubelet(tmp_path / "kubelet.sock")
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"))
    events = []
    try:
        handle = start_node_agent(
            agent_settings(tmp_path),
            [gpu],
            client,
            StaticPodMetadata({}),
            events=type(
                "Sink", (), {"emit": lambda self, p, e: events.append((p, e)), "close": lambda self: None}
            )(),
            run_loop=False,
        )
        assert gpu.power_limit_mw() == 700_000, "restored before the first cycle"
        assert (
            handle.agent.metrics.registry.get_sample_value(
                "eo_node_agent_restores_total", {"uuid": G0, "reason": "agent_restart"}
            )
            == 1.0
        )
        assert [(str(p), e.reason) for p, e in events] == [("inference/llama-0", "PowerCapRestored")]
        assert json.loads((tmp_path / "state" / f"{G0}.json").read_text())["status"] == "restored"
        handle.stop()
    finally:
        client.close()
        server.stop(None)


def test_it_refuses_to_start_without_permission(tmp_path: Path) -> None:
    server, _ = start_kubelet(tmp_path / "kubelet.sock")
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"))
    try:
        with pytest.raises(StartupRefused, match="CAP_SYS_ADMIN"):
            start_node_agent(
                agent_settings(tmp_path), [SimulatedGpu(0, privileged=False)], client, StaticPodMetadata({}),
                run_loop=False,
            )  # fmt: skip
    finally:
        client.close()
        server.stop(None)


def test_a_governor_sidecar_with_a_budget_gets_both_its_clock_and_its_power_limit(
    rig: AgentRig, tmp_path: Path
) -> None:
    """The clock governor's request (a clock and a power limit for one GPU), from the real sidecar's
    /metrics, read by the agent: both applied, both restored when the pod goes."""
    feed = VllmStateFeed()
    with hostile_server(Behaviour(handler=feed)) as (server, _):
        sidecar = start_powercap(
            from_values(
                PowercapSettings,
                {"latency_target_s": 1.0, "apply_via": "agent", "actuator": "clocks",
                 "ttft_target_s": 0.5, "itl_target_s": 0.05, "power_budget_w": 450.0,
                 "metrics_url": server + "/metrics", "port": 0, "listen_address": "127.0.0.1",
                 "state_dir": tmp_path / "sidecar"},
                environ={},
            ),
            [SimulatedGpu(0, privileged=False)],
            type("Fast", (), {"read": lambda self, now: LatencySample(0.1, 10.0)})(),
            run_loop=False,
            wall_clock=rig.clock,
            # The ticks' own clock too: the governor's prompt rate is tokens over the time between reads.
            clock=rig.clock,
        )  # fmt: skip
        try:
            rig.add_pod("llama-0", [G0])
            rig.pages.pop("llama-0").stop()
            annotations = {OPT_IN_ANNOTATION: "true", PORT_ANNOTATION: str(sidecar.port)}
            meta = PodMeta(Workload("Deployment", "llama"), "127.0.0.1", annotations, {}, "uid-llama-0")
            rig.metadata.set(PodKey("inference", "llama-0"), meta)
            for _ in range(6):
                rig.clock.now += 3
                sidecar.sidecar.tick()
                rig.cycle(0)
            locked = rig.gpus[0].locked_sm_clock_mhz
            assert locked is not None and locked < 1980, "the governor's clock, applied by the agent"
            assert rig.limit_w() == 450.0, "and the budget beside it"
            assert rig.sample("eo_node_agent_setpoint_watts", uuid=G0) == 450.0
        finally:
            sidecar.stop()
    rig.remove_pod("llama-0")
    rig.cycle()
    assert rig.limit_w() == 700.0 and rig.gpus[0].locked_sm_clock_mhz is None
    assert rig.restores(G0, "pod_gone") == 1.0
