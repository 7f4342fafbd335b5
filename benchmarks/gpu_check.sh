#!/usr/bin/env bash
# Check a GPU server in a few minutes: versions, the headline papermill command, fp16 training
# at 512x512, prediction with flip TTA, Mask2Former's compiled-ops message and bench_gpu.py.
#
#     bash benchmarks/gpu_check.sh                 # from the repository root
#
# Each step prints PASS or FAIL with its time; its output goes to $GPU_CHECK_DIR/<step>.log
# (default outputs/gpu_check/), executed notebooks beside them, a summary in summary.txt.
# Runs, splits and predictions go to $SEGKIT_OUTPUTS (default /tmp/segkit_gpu_check), so the
# check leaves the checkout's outputs/ alone. Exit status: the number of failed steps (0: all
# passed). Where .whl/ holds wheels and mmseg does not import, benchmarks/device_setup.sh
# installs them first (a GPU machine without a package registry).
#
# Settings (environment): PYTHON (python3), GPU_CHECK_DIR, SEGKIT_OUTPUTS, GPU_CHECK_ITERS
# (50), GPU_CHECK_SIZE (512), GPU_CHECK_BATCH (16), GPU_CHECK_WORKERS (8), BENCH_GPU_ARGS
# (--quick; "" for the full benchmark), BENCH_GPU_TIMEOUT (900 s), GPU_CHECK_ALLOW_CPU=1 to run the steps without CUDA
# (with GPU_CHECK_SIZE=64 GPU_CHECK_ITERS=2 GPU_CHECK_BATCH=2 GPU_CHECK_WORKERS=0
# BENCH_GPU_ARGS=--cpu-smoke it checks this script on a CPU in a few minutes).

set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
LOG=${GPU_CHECK_DIR:-outputs/gpu_check}
ITERS=${GPU_CHECK_ITERS:-50}
SIZE=${GPU_CHECK_SIZE:-512}
BATCH=${GPU_CHECK_BATCH:-16}
WORKERS=${GPU_CHECK_WORKERS:-8}
BENCH_GPU_ARGS=${BENCH_GPU_ARGS---quick}
export SEGKIT_OUTPUTS=${SEGKIT_OUTPUTS:-/tmp/segkit_gpu_check}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG" "$SEGKIT_OUTPUTS"
LOG=$(cd "$LOG" && pwd)
RUN_NAME=gpu_check_segformer_b0
: >"$LOG/summary.txt"
FAILED=0
START_ALL=$(date +%s.%N)

say() { echo "$*" | tee -a "$LOG/summary.txt"; }

# run_step NAME TIMEOUT_SECONDS COMMAND...: timed, logged, PASS / FAIL
run_step() {
    local name=$1 limit=$2 start end rc
    shift 2
    start=$(date +%s.%N)
    echo "== $name: $*" >"$LOG/$name.log"
    timeout "$limit" "$@" >>"$LOG/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc -eq 0 ]; then
        say "PASS $name (${secs} s)"
    else
        [ $rc -eq 124 ] && rc="$rc: timed out after ${limit} s"
        say "FAIL $name (${secs} s, exit $rc; log: $LOG/$name.log)"
        tail -n 15 "$LOG/$name.log" | sed 's/^/    /'
        FAILED=$((FAILED + 1))
    fi
}

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import mmseg" >/dev/null 2>&1; then
    start=$(date +%s)
    # shellcheck source=/dev/null
    if source benchmarks/device_setup.sh; then
        say "PASS install carried wheels ($(($(date +%s) - start)) s)"
    else
        say "FAIL install carried wheels"
        exit 1
    fi
fi

run_step versions 300 "$PY" -c '
import importlib.metadata as md, platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "x", torch.cuda.device_count())
for d in ("onedl-mmengine", "onedl-mmcv", "onedl-mmsegmentation", "onedl-mmdetection", "numpy",
          "opencv-python-headless", "pycocotools", "papermill"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "MISSING")
import mmseg.models, segkit.compat
print("mmcv compiled ops:", segkit.compat.mmcv_has_compiled_ops())
'
grep -E "^(python|torch|GPU|onedl-[a-z]+|numpy|opencv-python-headless|pycocotools|papermill|mmcv compiled ops:) " \
    "$LOG/versions.log" | sed 's/^/    /'
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
        && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    say "FAIL cuda: torch sees no CUDA device (GPU_CHECK_ALLOW_CPU=1 runs the steps anyway)"
    exit 1
fi

run_step split 300 "$PY" -m papermill notebooks/02_split.ipynb "$LOG/02_split.ipynb"

# the headline command: 04_train on the embedded sample, fold 0, 50 iterations (its defaults)
run_step headline_04_train 600 "$PY" -m papermill notebooks/04_train.ipynb \
    "$LOG/04_train_headline.ipynb" -p fold 0 -p iters "$ITERS" -p val_interval "$ITERS" \
    -p run_name gpu_check_headline

# fp16 training at the competition's size, the model the users start with
run_step fp16_train 600 "$PY" -m papermill notebooks/04_train.ipynb \
    "$LOG/04_train_fp16.ipynb" -p fold 0 -p model segformer_b0 -p weights none \
    -p image_size "$SIZE" -p crop_size "$SIZE" -p batch_size "$BATCH" -p iters "$ITERS" \
    -p val_interval "$ITERS" -p warmup_iters 10 -p amp True -p num_workers "$WORKERS" \
    -p run_name "$RUN_NAME"

run_step predict_tta 600 "$PY" -m papermill notebooks/05_predict.ipynb \
    "$LOG/05_predict_tta.ipynb" -p run_dir "$SEGKIT_OUTPUTS/runs/$RUN_NAME" \
    -y "flips: [h, v]" -p amp True -p name "$RUN_NAME"

# Mask2Former: builds and runs with compiled mmcv ops; without them the deformable attention
# must fail with segkit's message naming the command that compiles them
run_step mask2former_ops 300 "$PY" -c "
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from segkit import compat
from segkit.train import build_config
compat.apply()
init_default_scope('mmseg')
device = 'cuda' if torch.cuda.is_available() else 'cpu'
cfg = build_config(model='mask2former_swin_t', weights='none', image_size=$SIZE, crop_size=$SIZE,
                   work_dir='$SEGKIT_OUTPUTS/runs/m2f_check')
model = MODELS.build(cfg['model']).to(device).eval()
x = torch.randn(1, 3, $SIZE, $SIZE, device=device)
metas = [dict(img_shape=($SIZE, $SIZE), ori_shape=($SIZE, $SIZE), pad_shape=($SIZE, $SIZE),
              padding_size=[0, 0, 0, 0])]
try:
    with torch.no_grad():
        model.inference(x, metas)
    print('Mask2Former forward ran on', device, '(compiled ops:', compat.mmcv_has_compiled_ops(), ')')
except compat.MissingCompiledOp as e:
    print('Mask2Former needs compiled mmcv ops here; segkit says:')
    print(e)
    assert 'mmcv' in str(e), 'the message should say how to get the compiled ops'
"
grep -v "^==" "$LOG/mask2former_ops.log" | tail -n 4 | sed 's/^/    /'

# shellcheck disable=SC2086
run_step bench_gpu "${BENCH_GPU_TIMEOUT:-900}" "$PY" benchmarks/bench_gpu.py $BENCH_GPU_ARGS --out "$LOG/results_gpu.md"

TOTAL=$(awk -v a="$START_ALL" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
if [ "$FAILED" -eq 0 ]; then
    say "gpu_check: all steps passed in ${TOTAL} s; logs in $LOG"
else
    say "gpu_check: $FAILED step(s) FAILED in ${TOTAL} s; logs in $LOG"
fi
exit "$FAILED"
