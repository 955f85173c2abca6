"""hiea-ray: entity alignment of large knowledge graphs on Ray.

Layout: ``hiea_ray.kg`` (readers, synthetic generator), ``hiea_ray.core`` (Ray-free algorithms:
verbalization, encoder, FAISS retrieval, decoding, fusion, metrics), ``hiea_ray.stages`` (one
module per pipeline stage, and the registry), ``hiea_ray.train`` (the Ray Train loop and tasks),
``hiea_ray.data`` (Ray Data plumbing), ``hiea_ray.io`` (the Parquet contracts between stages),
``hiea_ray.pipeline`` (the runner), ``hiea_ray.cli`` (the ``hiea-ray`` command).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from hiea_ray import align, open_run`` (the Python API, ``hiea_ray.api``), loaded on first use."""
    if name in ("align", "open_run", "Run"):
        from hiea_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'hiea_ray' has no attribute {name!r}")
