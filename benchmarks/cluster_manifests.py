"""The validation result of every shipped cluster file, recorded.

    .venv/bin/python benchmarks/cluster_manifests.py

Runs ``tests/test_cluster_configs.py`` (the KubeRay RayJob / RayService against the v1 CRDs of
``../shared/schemas/kuberay``, strictly; every Serve config against Ray's ``ServeDeploySchema`` with
no ignored key and against the deployments the app builds over its run kind; the launcher through
Ray's own validator; the Dockerfile statically; the one image) and writes each check's outcome to
``benchmarks/results/cluster_manifests.json``. Exit 1 when any check fails or is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/test_cluster_configs.py"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.time()
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS,
                             f"--junitxml={xml}"], cwd=ROOT).returncode
        wall = time.time() - t0
        checks = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome, why = tag, (el.get("message") or "")[:300]
                    break
            checks.append({"check": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time", 0)), 2),
                           **({"why": why} if outcome != "passed" else {})})
    ok = rc == 0 and all(c["outcome"] == "passed" for c in checks)
    doc = {"command": "benchmarks/cluster_manifests.py", "date": time.strftime("%Y-%m-%d"), "tests": TESTS,
           "files": sorted(p.name for p in (ROOT / "cluster").iterdir() if p.is_file()),
           "passed": sum(c["outcome"] == "passed" for c in checks), "checks_total": len(checks),
           "all_passed": ok, "wall_s": round(wall, 1), "checks": checks}
    (ROOT / "benchmarks" / "results" / "cluster_manifests.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{doc['passed']} of {len(checks)} checks passed in {wall:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
