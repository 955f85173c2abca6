"""The Ray Serve application: Retriever -> Router -> LLM deployments behind a FastAPI ingress.

    build_app(run_dir, overrides) -> Application    (handles passed by .bind())
    app(args)                                          (the builder `serve run` / `serve deploy` import)

- ``Retriever``: ``engine.SmallTier`` — the run's verbalizer and encoder, FAISS over the served
  protocol's target vectors, every decoder's list for the query, the router's features.
- ``Router``: ``engine.RouterTier`` — P(the small models are right), certain or not.
- ``LLM``: ``engine.LLMTier`` behind ``@serve.batch`` (``serve.llm_batch_size`` prompts per forward
  pass, ``serve.llm_batch_wait_s``): one forward pass per routed query; GPU per replica by config.
- ``Ingress`` (``@serve.ingress`` FastAPI): ``POST /v1/align``, ``POST /v1/align/batch``,
  ``GET /v1/entities/{kg}/{id}``, ``GET /healthz``; OpenAPI at ``/docs``. A request mistake is a
  4xx naming the field (``{"error": {"field", "message"}}``), never a traceback.

Backpressure: each deployment's ``max_ongoing_requests`` / ``max_queued_requests`` (Serve answers
503 beyond them); the HTTP proxy's ``request_timeout_s`` (``serve.request_timeout_s``). Replicas are
fixed or autoscaled (``serve.*_replicas`` / ``*_max_replicas``, ``target_ongoing_requests``); Serve
replaces a dead replica (its health check: ``check_health``).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations as types in the replica
import asyncio
import logging
import re
import time
from typing import Annotated
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi import Path as FastAPIPath
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from hiea_ray.serve.schema import (
    AlignRequest, AlignResponse, BatchRequest, BatchResponse, EntityOut, HealthOut, error_responses,
)

log = logging.getLogger(__name__)

api = FastAPI(title="hiea-ray", version="1",
              description="Entity alignment against a KG aligned offline by hiea-ray: retriever -> router -> LLM.")


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"field": field, "message": message}})


_INTEGER = re.compile(r"-?[0-9]{1,19}")

# serve.max_body_bytes and serve.body_timeout_s, set by the Ingress replica (the middleware runs in its process)
_MAX_BODY = [1_000_000]
_BODY_TIMEOUT = [10.0]


# the API's bearer token (serve.api_token_env), set by the Ingress replica; None: no authentication
_TOKEN: list = [None]
OPEN_PATHS = ("/healthz",)  # probes need no token


def api_token(sv) -> str | None:
    """The token ``serve.api_token_env`` names, read from the environment; a named variable that is
    unset or empty is a user error (the service never starts open by mistake)."""
    import os

    from hiea_ray.errors import UserError

    if not sv.api_token_env:
        return None
    token = os.environ.get(sv.api_token_env, "")
    if not token.strip():
        raise UserError(f"config field serve.api_token_env: the environment variable {sv.api_token_env} is unset or empty")
    return token.strip()


def route_path(request: Request) -> str:
    """The request's path within the app (the Serve route prefix, FastAPI's root_path, left off)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


async def bearer_auth(request: Request, call_next):
    """With a token set, a request without ``Authorization: Bearer <token>`` is 401 (but GET /healthz)."""
    import hmac

    token = _TOKEN[0]
    if token is not None and route_path(request) not in OPEN_PATHS:
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            r = _error(401, "authorization", "a valid 'Authorization: Bearer <token>' header is required")
            r.headers["WWW-Authenticate"] = "Bearer"
            return r
    return await call_next(request)


api.middleware("http")(bearer_auth)


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    """A POST body over serve.max_body_bytes -> 413 before it is read or parsed; one that has not
    fully arrived within serve.body_timeout_s (a Content-Length larger than what is sent) -> 408 in
    the API's error shape, the connection closed. The body is read only once it may be."""
    if request.method == "POST":
        n = request.headers.get("content-length")
        if n is None:
            return _error(411, "body", "a Content-Length header is required")
        if not n.isdigit() or int(n) > _MAX_BODY[0]:
            return _error(413, "body", f"the body is over {_MAX_BODY[0]} bytes")
        try:
            await asyncio.wait_for(request.body(), _BODY_TIMEOUT[0])  # cached: the endpoint reads it again
        except asyncio.TimeoutError:
            r = _error(408, "body", f"the body did not arrive within {_BODY_TIMEOUT[0]:g} s (is Content-Length right?)")
            r.headers["Connection"] = "close"
            return r
    return await call_next(request)


# serve.max_batch_queries and whether the run has an LLM tier, set by the Ingress replica:
# /openapi.json documents the served run's limits and choices
_MAX_BATCH = [64]
_HAS_LLM = [True]


@api.middleware("http")
async def _run_limits_in_schema(request: Request, call_next):
    """The first GET /openapi.json builds the schema with this run's batch limit (maxItems) and,
    on a run without an LLM tier, without ``tier: llm`` among the choices."""
    app = request.app
    if route_path(request) == app.openapi_url and app.openapi_schema is None:
        schemas = app.openapi()["components"]["schemas"]
        schemas["BatchRequest"]["properties"]["queries"]["maxItems"] = _MAX_BATCH[0]
        if not _HAS_LLM[0]:
            tier = schemas["AlignRequest"]["properties"]["tier"]
            tier["enum"] = [t for t in tier["enum"] if t != "llm"]
            tier["description"] = "auto: the router decides (this run has no LLM tier)"
            schemas["AlignResponse"]["properties"]["tier"]["enum"] = ["small"]
    return await call_next(request)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's own errors (an unknown route, a method not allowed, a body it cannot parse) in the
    API's one shape, with their status and headers (405's Allow)."""
    field = "body" if exc.status_code == 400 else ("path" if exc.status_code in (404, 405) else "")
    r = _error(exc.status_code, field, str(exc.detail))
    r.headers.update(getattr(exc, "headers", None) or {})
    return r


def readable_field(loc) -> str:
    """A pydantic error location as a dotted field path a person can read: the request part
    (body / path / query) and pydantic's validator steps (``function-before[...]``, ``int``,
    ``str``, ``constrained-str``) left out."""
    steps = [str(x) for x in loc if x not in ("body", "path", "query")]
    return ".".join(x for x in steps if not re.search(r"[\[\]()]|^(int|str|float|bool|constrained-str|json-or-python)$", x))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # an unparsable body (bad JSON, invalid UTF-8): 400, as FastAPI's own
        return _error(400, "body", f"the body is not valid JSON ({first.get('msg', 'invalid')})")
    field = readable_field(first.get("loc", ())) or "body"
    return JSONResponse(status_code=422, content={
        "error": {"field": field, "message": str(first.get("msg", "invalid"))},
        "detail": [{"loc": [x for x in readable_field(e.get("loc", ())).split(".") if x] or ["body"],
                    "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))} for e in errs]})


def _unavailable(exc: Exception) -> bool:
    """A downstream deployment is full (backpressure) or its replica died mid-request: retryable."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(exc, (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError,
                            ActorUnavailableError))


@api.exception_handler(Exception)
async def _internal(request: Request, exc: Exception):  # no traceback in a response
    if _unavailable(exc):
        return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                            content={"error": {"field": "", "message": f"overloaded or restarting ({type(exc).__name__}): "
                                                                       "retry with backoff"}})
    log.exception("internal error on %s", request.url.path)
    return _error(500, "", f"internal error ({type(exc).__name__})")


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, run: str, overrides: list[str]):
        from hiea_ray.serve.engine import ServeRun, SmallTier

        self.tier = SmallTier(ServeRun(run, overrides))

    async def __call__(self, queries: list[dict]) -> list[dict]:
        """Per query: a SmallTier row, or {"error": (status, field, message)}. Run on the replica's
        event loop (no thread-pool hop: ~17 ms of CPU per query, one query at a time anyway)."""
        from hiea_ray.serve.engine import BadQuery, UnknownEntity

        ok, ents, out = [], [], [None] * len(queries)
        for i, q in enumerate(queries):
            try:
                ents.append(self.tier.resolve(q))
                ok.append(i)
            except UnknownEntity as e:
                out[i] = {"error": (404, e.field, str(e))}
            except BadQuery as e:
                out[i] = {"error": (422, e.field, str(e))}
        for i, row in zip(ok, self.tier(ents) if ok else []):
            out[i] = row
        return out

    def check_health(self) -> None:
        if self.tier.index.ntotal != len(self.tier.b):
            raise RuntimeError("the FAISS index lost its targets")


@serve.deployment(name="Router")
class Router:
    def __init__(self, run: str, overrides: list[str]):
        from hiea_ray.serve.engine import RouterTier, ServeRun

        self.tier = RouterTier(ServeRun(run, overrides))

    async def __call__(self, X: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tier(X, names)  # ~1 ms: on the event loop, no thread-pool hop


@serve.deployment(name="LLM")
class LLM:
    def __init__(self, run: str, overrides: list[str], batch_size: int, wait_s: float):
        from hiea_ray.serve.engine import LLMTier, ServeRun

        self.tier = LLMTier(ServeRun(run, overrides))
        self.score.set_max_batch_size(batch_size)
        self.score.set_batch_wait_timeout_s(wait_s)
        self.batches: list[int] = []

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def score(self, prompts: list[dict]) -> list[np.ndarray]:
        self.batches.append(len(prompts))
        logp = await asyncio.get_running_loop().run_in_executor(None, self.tier.score, prompts)
        return list(logp)

    async def __call__(self, entity, vector: np.ndarray, cand: np.ndarray) -> dict:
        t0 = time.perf_counter()
        p = self.tier.prompt(entity, vector, cand)
        logp = await self.score(p)
        return {"options": p["options"], "n_options": p["n_options"], "logp": logp, "tokens": p["tokens"],
                "ms": 1000 * (time.perf_counter() - t0)}

    def stats(self) -> dict:
        b = self.batches
        return {"batches": len(b), "mean_batch": round(float(np.mean(b)), 2) if b else 0.0}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever, router, llm, run: str, overrides: list[str]):
        from hiea_ray.core.hiea import fusion_weight
        from hiea_ray.serve.engine import ServeRun

        ctx = ServeRun(run, overrides)
        self.ctx, self.sv = ctx, ctx.cfg.serve
        # through the module: this class travels by value (its globals are copies), the middleware does not
        import hiea_ray.serve.app as module

        module._MAX_BODY[0] = self.sv.max_body_bytes
        module._MAX_BATCH[0] = self.sv.max_batch_queries
        module._BODY_TIMEOUT[0] = self.sv.body_timeout_s
        module._HAS_LLM[0] = ctx.has_llm
        module._TOKEN[0] = api_token(self.sv)
        self.retriever, self.router, self.llm = retriever, router, llm
        ent = ctx.pair().entities.sort_by("id")
        self.ids, self.kg, self.names = ent["id"].to_numpy(), ent["kg"].to_numpy(), ent["name"].to_pylist()
        self.uris = ent["uri"].to_pylist()  # the input's identifiers (IRIs, Q-ids)
        self.by_uri = {(int(k), u): int(i) for i, k, u in zip(self.ids.tolist(), self.kg.tolist(), self.uris)}
        texts = ctx.texts().sort_by("id")
        self.text_ids, self.texts = texts["id"].to_numpy(), texts["text"].to_pylist()
        self.fusion = fusion_weight(ctx.cfg.llm.fusion, ctx.llm_model) if ctx.has_llm else 0.0

    def name(self, i: int) -> str:
        return self.names[int(np.searchsorted(self.ids, i))]

    def uri(self, i: int) -> str:
        return self.uris[int(np.searchsorted(self.ids, i))]

    async def _align(self, queries: list[AlignRequest]) -> tuple[list[dict] | None, JSONResponse | None]:
        from hiea_ray.serve.engine import answer

        t0 = time.perf_counter()
        batch = len(queries) > 1
        where = (lambda i, f: f"queries.{i}.{f}") if batch else (lambda i, f: f)  # noqa: E731
        ks = []
        for i, q in enumerate(queries):
            k = self.ctx.k if q.k is None else min(q.k, self.ctx.max_k)  # at most max_k (GET /healthz says it)
            if q.tier == "llm" and not self.ctx.has_llm:
                return None, _error(422, where(i, "tier"), "this run has no LLM tier (no router / llm_train model)")
            ks.append(k)
        rows = await self.retriever.remote([q.model_dump() for q in queries])
        for i, r in enumerate(rows):
            if "error" in r:
                status, field, msg = r["error"]
                return None, _error(status, where(i, field if field != "id" else "id"), msg)
        t1 = time.perf_counter()
        prob = certain = None
        if self.ctx.has_router:
            X = np.stack([r["features"] for r in rows])
            prob, certain = await self.router.remote(X, rows[0]["feature_names"])
        t2 = time.perf_counter()
        to_llm = []
        for i, q in enumerate(queries):
            if q.tier == "llm" or (q.tier == "auto" and self.ctx.has_llm and (not self.sv.route or not certain[i])):
                to_llm.append(i)
        outs = await asyncio.gather(*[self.llm.remote(rows[i]["entity"], rows[i]["vector"], rows[i]["ids"]) for i in to_llm])
        llm_of = dict(zip(to_llm, outs))
        t3 = time.perf_counter()
        bodies = []
        for i, r in enumerate(rows):
            b = answer(r, ks[i], self.name, None if prob is None else prob[i], None if certain is None else certain[i],
                       llm_of.get(i), self.fusion, self.uri)
            b["timings_ms"] = {"retriever": round(1000 * (t1 - t0), 2), "router": round(1000 * (t2 - t1), 2),
                               "llm": round(llm_of[i]["ms"], 2) if i in llm_of else 0.0,
                               "total": round(1000 * (time.perf_counter() - t0), 2)}
            bodies.append(b)
        return bodies, None

    @api.post("/v1/align", summary="Align one entity (a KG1 id, or a new entity by its facts)",
              response_model=AlignResponse, response_model_exclude_unset=True,
              responses=error_responses(400, 401, 404, 408, 411, 413, 422, 500, 503))
    async def align(self, body: AlignRequest):
        bodies, err = await self._align([body])
        return err if err is not None else bodies[0]

    @api.post("/v1/align/batch", summary="Align several entities in one call",
              response_model=BatchResponse, response_model_exclude_unset=True,
              responses=error_responses(400, 401, 404, 408, 411, 413, 422, 500, 503))
    async def align_batch(self, body: BatchRequest):
        if len(body.queries) > self.sv.max_batch_queries:
            return _error(422, "queries", f"at most {self.sv.max_batch_queries} queries per call, got {len(body.queries)}")
        bodies, err = await self._align(body.queries)
        return err if err is not None else {"results": bodies}

    @api.get("/v1/entities/{kg}/{entity_id:path}",
             summary="An entity of the run by its id or its input identifier (IRI, Q-id): name and verbalized text",
             response_model=EntityOut, responses=error_responses(401, 404, 422, 500))
    async def entity(self, kg: Annotated[int, FastAPIPath(ge=1, le=2, description="1 = KG1, 2 = KG2")],
                     entity_id: Annotated[str, FastAPIPath(description="the entity's id (ASCII digits) or its "
                                                                       "input identifier (IRI, Q-id)")]):
        eid = self.by_uri.get((kg, entity_id))
        if eid is None and _INTEGER.fullmatch(entity_id) and -(2**63) <= int(entity_id) < 2**63:
            eid = int(entity_id)  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        r = int(np.searchsorted(self.ids, eid)) if eid is not None else len(self.ids)
        if r >= len(self.ids) or self.ids[r] != eid or self.kg[r] != kg:
            return _error(404, "entity_id", f"{entity_id} is not a KG{kg} entity of this run (an id or an input identifier)")
        t = int(np.searchsorted(self.text_ids, eid))
        return {"id": int(eid), "kg": kg, "kg_id": self.uris[r], "name": self.names[r], "text": self.texts[t]}

    @api.get("/healthz", summary="Liveness and what is served", response_model=HealthOut)
    async def healthz(self):
        return {"status": "ok", **self.ctx.describe()}


def _options(sv, replicas: int, max_replicas: int, cpus: float, gpus: float = 0.0) -> dict:
    opts = {"max_ongoing_requests": sv.max_ongoing_requests, "max_queued_requests": sv.max_queued_requests,
            "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}, "health_check_period_s": 2.0}
    if max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": sv.target_ongoing_requests}
    else:
        opts["num_replicas"] = replicas
    return opts


def build_app(run_dir, overrides=None):
    """The Serve application over a finished run (``overrides``: ``--set`` items, e.g. serve.k=5).
    The decoder state is built here, once, before any replica starts."""
    from hiea_ray.serve.engine import ServeRun, decoder_state

    run, overrides = str(Path(run_dir).resolve()), list(overrides or [])
    ctx = ServeRun(run, overrides)
    decoder_state(ctx)
    sv = ctx.cfg.serve
    opts = deployment_options(ctx)
    token = api_token(sv)
    if token is not None:  # to the Ingress replicas, wherever they run: they never see this driver's environment
        actor = opts["Ingress"]["ray_actor_options"]
        actor["runtime_env"] = {"env_vars": {sv.api_token_env: token}}
    router = Router.options(**opts["Router"]).bind(run, overrides) if "Router" in opts else None
    llm = LLM.options(**opts["LLM"]).bind(run, overrides, sv.llm_batch_size, sv.llm_batch_wait_s) if "LLM" in opts else None
    return Ingress.options(**opts["Ingress"]).bind(Retriever.options(**opts["Retriever"]).bind(run, overrides), router,
                                                   llm, run, overrides)


def deployment_options(ctx) -> dict[str, dict]:
    """The deployments the app builds over a run (``ServeRun``) — Router only with a router, LLM
    only with the HIEA tier — and each one's options from the run's ``serve`` settings."""
    sv = ctx.cfg.serve
    out = {"Ingress": _options(sv, 1, 1, 0.1),
           "Retriever": _options(sv, sv.retriever_replicas, sv.retriever_max_replicas, sv.retriever_cpus)}
    if ctx.has_router:
        out["Router"] = _options(sv, 1, 1, 0.1)
    if ctx.has_llm:
        out["LLM"] = _options(sv, sv.llm_replicas, sv.llm_max_replicas, sv.llm_cpus, sv.llm_gpus)
    return out


def serve_config(ctx, run_path: str, overrides: list[str]) -> dict:
    """A Serve config (``serve deploy`` / a RayService's serveConfigV2) for this run: exactly the
    deployments the app builds over it, with its options; ``run_path``: the run folder as the
    cluster's nodes see it."""
    sv = ctx.cfg.serve
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": sv.port, "request_timeout_s": sv.request_timeout_s},
        "applications": [{
            "name": "hiea", "route_prefix": "/", "import_path": "hiea_ray.serve.app:app",
            "args": {"run": run_path, "overrides": list(overrides)},
            "deployments": [{"name": name, **o} for name, o in deployment_options(ctx).items()],
        }],
    }


def app(args: dict):
    """Application builder for ``serve run`` / ``serve deploy`` (args: run, overrides)."""
    if "run" not in args:
        raise ValueError("application args: 'run' (a finished hiea-ray run folder) is required")
    return build_app(args["run"], args.get("overrides") or [])
