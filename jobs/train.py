"""Training-only entrypoint for `ray job submit`: one training task, its models left in the run folder.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py retriever --data /shared/data/zh_en --out /shared/runs/zh_en \
        --config benchmarks/configs/dbp15k-retriever.yaml --config-extra cluster/gpu.yaml

Tasks and where their model lands (the run folder on shared storage; a later `jobs/align.py`
with the same --out and config reuses every finished stage, the training included):

    retriever   train/model/               (train.enabled)
    reranker    rerank_train/model/        (rerank.enabled; retrieve and embed run first)
    llm         llm_train/model/           (llm.enabled; the small-model stages and route first)
    verbalizer  verbalize_train/model/     (needs verbalize.mode llm|llm+template and verbalize.train_file)

The stages a task reads run first (reused when finished); the run stops after the task's stage.
A killed job resumes from its last checkpoint when it is submitted again with the same --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir carries hiea_ray/

# task -> (the stage to stop after, the config it switches on)
TASKS = {
    "retriever": ("train", ["train.enabled=true"]),
    "reranker": ("rerank_train", ["rerank.enabled=true", "rerank.train=true"]),
    "llm": ("llm_train", ["llm.enabled=true", "llm.train=true"]),
    "verbalizer": ("verbalize_train", []),
}


def align_argv(argv: list[str]) -> list[str]:
    """``TASK [align options...]`` -> the argv of ``hiea-ray align`` (``jobs/align.py`` handles
    --config-extra); an unknown task is a one-line error."""
    if not argv or argv[0] not in TASKS:
        got = argv[0] if argv else "nothing"
        raise SystemExit(f"jobs/train.py: error: the first argument names the task, one of {', '.join(TASKS)}; got {got}")
    stage, sets = TASKS[argv[0]]
    rest = argv[1:]
    if "--until" in rest:
        raise SystemExit("jobs/train.py: error: --until is the task's stage; leave it out")
    # the task's switches after --config (a --config-extra file, read later by jobs/align.py, can
    # still override them); a config that cannot run the task's stage stops with one line
    return [*rest, "--until", stage, *[x for kv in sets for x in ("--set", kv)]]


if __name__ == "__main__":
    import runpy

    sys.argv = [str(Path(__file__).with_name("align.py")), *align_argv(sys.argv[1:])]
    runpy.run_path(sys.argv[0], run_name="__main__")
