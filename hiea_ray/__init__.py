"""hiea-ray: entity alignment of large knowledge graphs on Ray.

Layout (bottom to top; a module imports only its own layer and those below):
``hiea_ray.kg`` (readers, dumps, synthetic and haystack generators), ``hiea_ray.core`` (Ray-free
algorithms: verbalization, encoder, FAISS retrieval, candidates, decoding, fusion, router, LLM,
metrics), ``hiea_ray.config`` (the one typed config), ``hiea_ray.io`` (the Parquet contracts
between stages); ``hiea_ray.ops`` (Ray Data's callable classes and chains), ``hiea_ray.ops.data``
(Ray plumbing: init, chains over Parquet, offloaded stages), the run readers ``hiea_ray.run``
(``context``, ``labelled``, ``alignment``); ``hiea_ray.stages`` (one module per pipeline
stage, and the registry), ``hiea_ray.train`` (the Ray Train loop and tasks), ``hiea_ray.serve``
(the Ray Serve application); ``hiea_ray.pipeline`` (the runner), ``hiea_ray.collab``
(collaboration rounds); ``hiea_ray.cli`` (the ``hiea-ray`` command), ``hiea_ray.api``
(``align``, ``open_run``: the Python API, below).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from hiea_ray import align, open_run`` (the Python API, ``hiea_ray.api``), loaded on first use."""
    if name in ("align", "open_run", "Run"):
        from hiea_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'hiea_ray' has no attribute {name!r}")
