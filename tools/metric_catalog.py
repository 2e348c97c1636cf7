"""The metric names Energy Orchestrator's components publish, and those users may add.

Rules and dashboards may only read these (or what the rules record): a test fails on any other name, so a
typo or a renamed metric cannot ship as a silently empty panel. The metric contract is in
docs/architecture.md; tests/unit/test_metric_catalog.py checks this list against the metrics the
components' code creates, both ways.
"""

from __future__ import annotations

EXPORTER = frozenset(
    {
        "eo_gpu_power_watts",
        "eo_gpu_energy_joules_total",
        "eo_gpu_power_limit_watts",
        "eo_gpu_power_limit_default_watts",
        "eo_gpu_power_limit_min_watts",
        "eo_gpu_power_limit_max_watts",
        "eo_gpu_temperature_celsius",
        "eo_gpu_utilization_ratio",
        "eo_gpu_sm_clock_hertz",
        "eo_gpu_clock_event_active",
        "eo_gpu_info",
        "eo_cpu_energy_joules_total",
        "eo_node_power_watts",
        "eo_node_power_age_seconds",
        "eo_gpu_pod_info",
        "eo_pod_energy_joules_total",
        "eo_pod_requests_total",
        "eo_pod_tokens_total",
        "eo_pod_joules_per_request",
        "eo_pod_requests_waiting",
        "eo_pod_requests_running",
        "eo_pod_kv_cache_usage_ratio",
        "eo_pod_metrics_up",
        "eo_exporter_collect_duration_seconds",
        "eo_exporter_collector_up",
    }
)

SCALER = frozenset(
    {
        "eo_scaler_desired_replicas",
        "eo_scaler_current_replicas",
        "eo_scaler_decisions_total",
        "eo_scaler_latency_slo_seconds",
        "eo_scaler_power_budget_watts",
        "eo_scaler_mode_info",
        "eo_scaler_errors_total",
        "eo_scaler_prometheus_queries_total",
        "eo_scaler_prometheus_failures_total",
        "eo_scaler_cache_hits_total",
        "eo_scaler_cache_misses_total",
    }
)

POWERCAP = frozenset(
    {
        "eo_powercap_target_watts",
        "eo_powercap_applied_watts",
        "eo_powercap_floor_watts",
        "eo_powercap_ceiling_watts",
        "eo_powercap_original_watts",
        "eo_powercap_target_sm_clock_hertz",
        "eo_powercap_applied_sm_clock_hertz",
        "eo_powercap_changes_total",
        "eo_powercap_dry_run",
        "eo_powercap_state",
        "eo_powercap_latency_seconds",
        "eo_powercap_latency_target_seconds",
        "eo_powercap_decisions_total",
        "eo_powercap_ttft_target_seconds",
        "eo_powercap_itl_target_seconds",
        "eo_powercap_workload_scaling_up",
    }
)

# Histograms publish three series per name.
HISTOGRAMS = frozenset(
    {
        "eo_pod_request_latency_seconds",
        "eo_pod_time_to_first_token_seconds",
        "eo_pod_inter_token_latency_seconds",
        "eo_pod_request_time_per_output_token_seconds",
        "eo_scaler_query_duration_seconds",
        "eo_scaler_request_duration_seconds",
    }
)

# Optional inputs a user provides; the rules use them when present.
USER_INPUTS = frozenset({"eo_datacenter_pue", "eo_grid_carbon_intensity_grams_per_kwh"})

# Series Prometheus itself creates.
PROMETHEUS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

PUBLISHED = (
    EXPORTER
    | SCALER
    | POWERCAP
    | USER_INPUTS
    | PROMETHEUS
    | frozenset(f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count"))
)
