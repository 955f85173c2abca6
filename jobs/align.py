"""Entrypoint for `ray job submit`: the same `hiea-ray align` command, run on the cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/align.py --data /data/DBP15K/zh_en --out /shared/runs/zh_en \
        --config benchmarks/configs/dbp15k-template.yaml --config-extra cluster/gpu.yaml

Inside a Ray job $RAY_ADDRESS is set, so the pipeline joins the cluster instead of starting a
local Ray. --config-extra FILE is another --config (files merge in order, then --set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir carries hiea_ray/

from hiea_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--config-extra", action="append", default=[])
    known, rest = ap.parse_known_args()
    sys.exit(main(["align", *rest, *[x for f in known.config_extra for x in ("--config", f)]]))
