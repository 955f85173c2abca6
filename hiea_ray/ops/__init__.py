"""The layer below the stages: Ray Data's reusable pieces, as plain callable classes and chains.

Each module holds the callable classes one kind of model work needs (the class loads its model once
in ``__init__`` and maps an Arrow batch in ``__call__``; tests call it directly, without Ray), the
``MapSpec`` that says how to chain it, and the function that chains it over Parquet. Stages,
training and serving import from here; nothing here imports a stage.

- ``embed``: ``Tokenize`` (texts -> token ids, CPU) and ``Embedder`` (texts or token ids -> unit
  vectors), ``embed_dataset`` (the resumable embed chain).
- ``verbalize``: ``Verbalizer`` (template texts) and ``LLMVerbalizer`` (an LLM's descriptions), their chains.
- ``rerank``: ``Reranker`` (the cross-encoder over a source's top-k), ``rerank_spec``.
- ``llm``: ``LLMScorer`` (the HIEA tier's one forward pass per routed source), ``llm_spec``.
- ``retrieve``: ``Searcher`` (a FAISS index, or one index shard, loaded once per actor), the
  index-building and list-merging tasks, ``retrieve_distributed`` (``retrieve.engine: ray``).
- ``decode``: ``DecodeShard`` (a block of source rows of the lists, ``core.sharded``),
  ``decode_distributed`` (``decode.engine: ray``).
- ``dump_ingest``: the dump parsing chain (byte ranges -> statements -> the four ingest tables).
- ``data``: the plumbing every chain shares — ``init_ray``, ``MapSpec`` / ``model_chain`` (the one
  place the tokenize mode is resolved), ``map_parquet`` (a resumable Ray Data stage over Parquet)
  and ``offloaded`` (a stage body as a Ray task, ``ray.offload``).
"""
