"""What each inference server publishes: the one table of metric names the exporter and the sidecar read.

Pure data and lookups (no I/O). For vLLM, SGLang, TGI and Triton it names the metrics for finished
requests, prompt and generation tokens, the latency histograms (end-to-end, time to first token,
inter-token latency / time per output token with one observation per token, and each request's mean
time per output token with one observation per finished request; each with the factor from its unit
to seconds) and the queue and saturation gauges (requests waiting, requests running, KV-cache usage as
a ratio 0..1).

A metric may list the names older versions of the server used for it (``older``). A reader takes the
first of ``names`` that has any sample in the page, so a server that publishes both the new name and
its deprecated copy is read once, and a new name whose samples are NaN stays missing rather than being
replaced by the old one.

Names as the servers publish them (checked against their documentation and source):

* vLLM: ``vllm:request_success_total``, ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``vllm:e2e_request_latency_seconds``, ``vllm:time_to_first_token_seconds``,
  ``vllm:inter_token_latency_seconds`` (>= 0.9; older ``vllm:time_per_output_token_seconds``),
  ``vllm:request_time_per_output_token_seconds`` (per request: its decode time over its output tokens
  after the first, 0 for a single-token request; the same bounds, 0.01 ... 80 s; no older name: before
  it vLLM had no per-request histogram), ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
  ``vllm:kv_cache_usage_perc`` (older ``vllm:gpu_cache_usage_perc``; both a ratio 0..1 despite the
  name).
* SGLang: ``sglang:num_requests_total``, ``sglang:prompt_tokens_total``,
  ``sglang:generation_tokens_total``, ``sglang:e2e_request_latency_seconds``,
  ``sglang:time_to_first_token_seconds``, ``sglang:inter_token_latency_seconds`` (older
  ``sglang:time_per_output_token_seconds``), ``sglang:request_time_per_output_token_seconds`` (per
  finished request with more than one output token; no older name: ``sglang:time_per_output_token_seconds``
  was per token in older releases and end-to-end latency over output tokens, first token included, in
  later ones, neither a request's mean ITL), ``sglang:num_queue_reqs``, ``sglang:num_running_reqs``,
  ``sglang:token_usage`` (KV-cache tokens in use over the pool, 0..1).
* TGI: ``tgi_request_success``, the sums of the token-count histograms ``tgi_request_input_length`` and
  ``tgi_request_generated_tokens``, ``tgi_request_duration``, no TTFT histogram,
  ``tgi_request_mean_time_per_token_duration`` (each request's mean time per token: TGI has no
  token-level histogram, so this one is both its ``itl`` and its ``request_itl``), ``tgi_queue_size``,
  ``tgi_batch_current_size``; no KV-cache ratio.
* Triton: ``nv_inference_request_success``; no token counters; its request durations are counters, so
  only ``nv_inference_first_response_histogram_ms`` (milliseconds) serves as a TTFT histogram;
  ``nv_inference_pending_request_count`` (requests waiting for the backend); with the TensorRT-LLM
  backend ``nv_trt_llm_request_metrics{request_type="active"}`` and
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

LATENCY_KINDS: tuple[str, ...] = ("e2e", "ttft", "itl")
"""End-to-end request latency, time to first token, inter-token latency (time per output token)."""


@dataclass(frozen=True)
class _Named:
    """A sample name and the names older versions of the server used for it (same meaning, same unit)."""

    name: str
    older: tuple[str, ...] = field(default=(), kw_only=True)

    @property
    def names(self) -> tuple[str, ...]:
        """The names to look for, newest first."""
        return (self.name, *self.older)


@dataclass(frozen=True)
class Metric(_Named):
    """A counter or gauge: its sample name, the label values a sample must carry, older names."""

    labels: tuple[tuple[str, str], ...] = ()

    def has_labels(self, labels: Mapping[str, str]) -> bool:
        """A sample with these labels carries every label value this metric asks for."""
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class Histogram(_Named):
    """A histogram's base name, the factor from its unit to seconds, and older names (same unit)."""

    to_seconds: float = 1.0


@dataclass(frozen=True)
class InferenceServer:
    """Where one kind of inference server publishes each signal; ``None`` where it publishes none."""

    name: str
    metrics_port: int
    signature: str
    """A sample-name prefix only this server's metrics have (identifies the server in a page)."""
    requests: Metric | None
    prompt_tokens: Metric | None = None
    generation_tokens: Metric | None = None
    e2e_latency: Histogram | None = None
    ttft: Histogram | None = None
    itl: Histogram | None = None
    """Inter-token latency, one observation per output token (TGI: per request, it has no other)."""
    request_itl: Histogram | None = None
    """Each finished request's mean time per output token after the first: the ITL a user feels."""
    requests_waiting: Metric | None = None
    requests_running: Metric | None = None
    kv_cache_usage: Metric | None = None
    """KV-cache blocks (or tokens) in use over those available, a ratio 0..1."""

    def latency(self, kind: str) -> Histogram | None:
        """The histogram of one of ``LATENCY_KINDS``; ``ValueError`` for another kind."""
        by_kind = {"e2e": self.e2e_latency, "ttft": self.ttft, "itl": self.itl}
        if kind not in by_kind:
            raise ValueError(f"latency kind {kind!r} is not one of {'|'.join(LATENCY_KINDS)}")
        return by_kind[kind]


# The signals of an ``InferenceServer`` by kind, as its field names: a reader that treats every signal of
# a kind alike (the exporter's annotation overrides, its list of wanted sample names) goes by these.
COUNTERS: tuple[str, ...] = ("requests", "prompt_tokens", "generation_tokens")
HISTOGRAMS: tuple[str, ...] = ("e2e_latency", "ttft", "itl", "request_itl")
GAUGES: tuple[str, ...] = ("requests_waiting", "requests_running", "kv_cache_usage")
SIGNALS: tuple[str, ...] = COUNTERS + HISTOGRAMS + GAUGES


SERVERS: Mapping[str, InferenceServer] = MappingProxyType(
    {
        "vllm": InferenceServer(
            "vllm",
            8000,
            "vllm:",
            requests=Metric("vllm:request_success_total"),
            prompt_tokens=Metric("vllm:prompt_tokens_total"),
            generation_tokens=Metric("vllm:generation_tokens_total"),
            e2e_latency=Histogram("vllm:e2e_request_latency_seconds"),
            ttft=Histogram("vllm:time_to_first_token_seconds"),
            itl=Histogram("vllm:inter_token_latency_seconds", older=("vllm:time_per_output_token_seconds",)),
            request_itl=Histogram("vllm:request_time_per_output_token_seconds"),
            requests_waiting=Metric("vllm:num_requests_waiting"),
            requests_running=Metric("vllm:num_requests_running"),
            kv_cache_usage=Metric("vllm:kv_cache_usage_perc", older=("vllm:gpu_cache_usage_perc",)),
        ),
        "tgi": InferenceServer(
            "tgi",
            80,
            "tgi_",
            requests=Metric("tgi_request_success"),
            prompt_tokens=Metric("tgi_request_input_length_sum"),
            generation_tokens=Metric("tgi_request_generated_tokens_sum"),
            e2e_latency=Histogram("tgi_request_duration"),
            itl=Histogram("tgi_request_mean_time_per_token_duration"),
            request_itl=Histogram("tgi_request_mean_time_per_token_duration"),
            requests_waiting=Metric("tgi_queue_size"),
            requests_running=Metric("tgi_batch_current_size"),
        ),
        "triton": InferenceServer(
            "triton",
            8002,
            "nv_inference_",
            requests=Metric("nv_inference_request_success"),
            ttft=Histogram("nv_inference_first_response_histogram_ms", to_seconds=0.001),
            requests_waiting=Metric("nv_inference_pending_request_count"),
            requests_running=Metric("nv_trt_llm_request_metrics", (("request_type", "active"),)),
            kv_cache_usage=Metric(
                "nv_trt_llm_kv_cache_block_metrics", (("kv_cache_block_type", "fraction"),)
            ),
        ),
        "sglang": InferenceServer(
            "sglang",
            30000,
            "sglang:",
            requests=Metric("sglang:num_requests_total"),
            prompt_tokens=Metric("sglang:prompt_tokens_total"),
            generation_tokens=Metric("sglang:generation_tokens_total"),
            e2e_latency=Histogram("sglang:e2e_request_latency_seconds"),
            ttft=Histogram("sglang:time_to_first_token_seconds"),
            itl=Histogram(
                "sglang:inter_token_latency_seconds", older=("sglang:time_per_output_token_seconds",)
            ),
            request_itl=Histogram("sglang:request_time_per_output_token_seconds"),
            requests_waiting=Metric("sglang:num_queue_reqs"),
            requests_running=Metric("sglang:num_running_reqs"),
            kv_cache_usage=Metric("sglang:token_usage"),
        ),
    }
)

SERVER_NAMES: tuple[str, ...] = tuple(SERVERS)

SIGNATURES: tuple[tuple[str, str], ...] = tuple((s.signature, s.name) for s in SERVERS.values())
"""(sample-name prefix, server name): identifies the server of a page without a ``server`` setting."""


def server(name: str) -> InferenceServer:
    """The server of that name; ``ValueError`` naming the known ones otherwise."""
    try:
        return SERVERS[name]
    except KeyError:
        raise ValueError(f"inference server {name!r} is not one of {'|'.join(SERVER_NAMES)}") from None


def latency_histogram(server_name: str, kind: str) -> Histogram | None:
    """The server's histogram for that latency kind; ``None`` where it publishes none, ``ValueError``
    for an unknown server or kind."""
    return server(server_name).latency(kind)
