"""hiea-ray: entity alignment of large knowledge graphs on Ray.

Layout: ``hiea_ray.kg`` (readers, synthetic generator), ``hiea_ray.core`` (Ray-free algorithms:
verbalization, encoder, FAISS retrieval, decoding, metrics), ``hiea_ray.ray_layer`` (Ray Data
stages and the pipeline runner), ``hiea_ray.cli`` (the ``hiea-ray`` command).
"""

__version__ = "0.1.0"
