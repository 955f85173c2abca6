"""A finished (or running) run folder read back — the readers every layer above the core shares.

- ``context``: ``RunContext`` (the folder and its config: upstream outputs, fingerprints, which
  encoder / reranker / LLM the run uses) and the shared readers (``candidate_lists``,
  ``seed_links``, ``seed_and_certain``, ``prompt_format``, ``trained_model``, ``hiea_merged``);
- ``labelled``: the labelled seed sources decoded out of fold (the calibrate and route stages);
- ``alignment``: the alignment a user takes away (links, unmatched, summary) from a run's output config.
"""

from hiea_ray.run.context import (
    HieaMerged, RunContext, candidate_lists, hiea_merged, prompt_format, seed_and_certain, seed_links, trained_model,
)

__all__ = ["HieaMerged", "RunContext", "candidate_lists", "hiea_merged", "prompt_format", "seed_and_certain",
           "seed_links", "trained_model"]
