"""The ``serve`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hiea_ray.config.fields import bounded
from hiea_ray.errors import UserError


@dataclass
class ServeConfig:
    """The online service over a finished run (``hiea-ray serve``, ``hiea_ray.serve``). Read only
    by the Serve app: no stage depends on it."""

    # Which of the run's protocols to serve (its targets are the index): null = all-targets when
    # the run has it (every KG2 entity), else the run's first protocol.
    protocol: str | None = None
    host: str = "127.0.0.1"
    port: int = bounded(8000, gt=0, lt=65536)
    # The name of an environment variable holding the API's bearer token (e.g. HIEA_API_TOKEN, filled
    # from a Kubernetes Secret): every request but GET /healthz must then carry
    # "Authorization: Bearer <token>" (401 otherwise). null = no authentication (loopback use).
    api_token_env: str | None = None
    # Candidates returned per query by default, and the most a request may ask for (both capped at
    # the run's retrieve.k).
    k: int = bounded(10, ge=1)
    max_k: int = 50
    # The certainty router on (false: every query goes to the LLM tier; the all-LLM baseline).
    route: bool = True
    # @serve.batch of the LLM tier: prompts per forward pass (1 = unbatched) and the wait to fill one.
    llm_batch_size: int = bounded(8, ge=1)
    llm_batch_wait_s: float = bounded(0.02, ge=0)
    # Replicas (min == max: fixed; max > min: autoscaled on target_ongoing_requests).
    retriever_replicas: int = bounded(1, ge=1)
    retriever_max_replicas: int = 1
    llm_replicas: int = bounded(1, ge=1)
    llm_max_replicas: int = 1
    target_ongoing_requests: float = bounded(4.0, gt=0)
    # Backpressure: requests a replica works on at once, and queued per handle before 503.
    max_ongoing_requests: int = bounded(32, ge=1)
    max_queued_requests: int = bounded(128, ge=1)
    # A request slower than this answers 408 (the HTTP proxy's end-to-end timeout).
    request_timeout_s: float = bounded(60.0, gt=0)
    # A request body that has not fully arrived this long after the headers (a Content-Length larger
    # than what is sent, a stalled client) answers 408 in the API's error shape.
    body_timeout_s: float = bounded(10.0, gt=0)
    # Request body limit (413 above it) and queries per /v1/align/batch call.
    max_body_bytes: int = bounded(1_000_000, ge=1)
    max_batch_queries: int = bounded(64, ge=1)
    # Resources per replica (num_gpus > 0 puts the LLM tier / encoder on a GPU; bf16 by llm.amp).
    retriever_cpus: float = bounded(0.5, gt=0)
    llm_cpus: float = bounded(1.0, gt=0)
    llm_gpus: float = bounded(0.0, ge=0)
    torch_threads: int = bounded(1, ge=0)

    def rules(self, cfg) -> None:
        if self.protocol is not None and self.protocol not in cfg.evaluate.protocols:
            raise UserError(f"config field serve.protocol: {self.protocol!r} is not one of the run's evaluate.protocols "
                            f"{cfg.evaluate.protocols}")
        if self.k > self.max_k:
            raise UserError("config fields serve.k / serve.max_k: need 1 <= k <= max_k")
        if self.retriever_max_replicas < self.retriever_replicas or self.llm_max_replicas < self.llm_replicas:
            raise UserError("config fields serve.*_max_replicas: must be >= the matching *_replicas")
