#!/usr/bin/env bash
# GPU benchmark suite: the first run of this project's CUDA paths, in one command.
#
# What it runs (from the repository root; every command under its own `timeout`, a failing
# one is logged and the suite goes on; all of it ends inside SUITE_BUDGET, 525 s):
#   1  environment: nvidia-smi, python/torch/torchvision versions, torch.cuda.is_available(),
#      the device name, whether training resolves AMP + channels-last on the device; the
#      package is made importable first (see "Package" below).
#   2  the bundled model's recipe (README, "The bundled default model") trained on $DEVICE,
#      where AMP and channels-last are on by themselves (TrainConfig amp/channels_last default
#      True; TrainingRun turns both on for CUDA only; the CLI has no flag for either), with
#      --time-limit (about 130 s) instead of a fixed time; then `napari-segen evaluate` of the
#      new model and of the bundled one on sample_data/isbi2012/test (held-out Dice), and the
#      same recipe for 1 epoch on the CPU (steps/s baseline of the same run).
#   3  benchmarks/inference_speed.py --size 1024 --rounds 3 on $DEVICE and on the CPU (ratio);
#      benchmarks/big_image.py --sizes 4096 (CPU only: it has no device option) as the
#      baseline, then the same block-wise prediction on $DEVICE at 4096^2 and 16384^2 through
#      `napari-segen predict IN.zarr --out OUT.zarr --device $DEVICE` on big_image.py's own
#      input (ISBI slices tiled into a zarr) and model (random U-Net depth 2, width 8), with
#      wall time, Mpx/s, peak GPU memory (torch) and peak RSS.
#   4  pix2pix at the paper's size on $DEVICE: `napari-segen synth train --preset pix2pix
#      --crop-size 256 --ngf 64 --ndf 64 --batch-size 1 --mask-map 0:1,255:0` on
#      sample_data/isbi2012/train with --time-limit (about 100 s; held-out quality readout at
#      the end), and the same for 20 s on the CPU (steps/s baseline). benchmarks/pix2pix_speed.py
#      is CPU-only (no device option): skipped unless DEVICE=cpu.
#   5  summary.txt: one line per command (OK / FAILED / TIMEOUT / SKIPPED, seconds, figures),
#      then the ratios against the baselines of the same run.
#
# On the device tool (H100, 16 cores, no internet), as one call:
#   run(command="bash benchmarks/gpu_suite.sh", timeout_s=570)
# zarr is not in the device image (needed by step 3's block-wise part). To have it, put its
# wheels in .whl/ here first (ignored by git) and add carry=[".whl"]; the suite installs
# .whl/*.whl into /tmp/site by itself:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr numcodecs donfig google-crc32c
# Package: when `import napari_segen` fails, the suite tries `python3 -m pip install -q -e .`
# (no internet there: it likely fails), then PYTHONPATH=src (the core needs only torch,
# torchvision, numpy, scipy, scikit-image, tifffile, imageio, pillow, safetensors,
# torchmetrics, tqdm: all in the device image). If neither works it says so and stops.
#
# Output ($OUT, default bench_out/gpu_suite; at most 8 files come back from the device):
#   summary.txt, 1_env.log, 2_train.log, 3_inference.log, 4_pix2pix.log (each command's
#   stdout and stderr, with its status and seconds), gpu_samples.csv (nvidia-smi once a
#   second: epoch seconds, GPU util %, memory used MiB). Models, zarr stores and sample
#   grids stay in a temporary work folder (KEEP_WORK=1 keeps it).
# The figures go into docs/benchmarks.md by hand afterwards (with the card's name; speed
# figures as ratios against the baselines measured in the same run).
#
# Dry run on a CPU-only machine (tiny settings, under 4 minutes, OMP_NUM_THREADS=1):
#   QUICK=1 DEVICE=cpu OUT=/tmp/gpu_dry bash benchmarks/gpu_suite.sh
# Settings (environment): DEVICE (cuda), QUICK (0), OUT, SUITE_BUDGET (seconds; 525, QUICK 230),
#   TRAIN_TIME (130), SYNTH_TIME (100), KEEP_WORK (0).

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
QUICK=${QUICK:-0}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench_out/gpu_suite}
KEEP_WORK=${KEEP_WORK:-0}
if [[ $QUICK == 1 ]]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
    SUITE_BUDGET=${SUITE_BUDGET:-230}
else
    SUITE_BUDGET=${SUITE_BUDGET:-525}
fi
TRAIN_TIME=${TRAIN_TIME:-130}
SYNTH_TIME=${SYNTH_TIME:-100}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TQDM_DISABLE=1
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_suite.XXXXXX) || exit 1
SUMMARY=$OUT/summary.txt
SMI_CSV=$OUT/gpu_samples.csv
STATE=$WORK/state.json
PY=python3
SEGEN=("$PY" -m napari_segen.cli)
ISBI=sample_data/isbi2012
MIN_STEP_S=10 # a command is started only with at least this many seconds of budget left
SAMPLER_PID=

now() { date +%s.%N; }
T_START=$(now)
elapsed() { awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%d", b - a }'; }
remaining() { echo $((SUITE_BUDGET - $(elapsed))); }
# lim WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the steps after it
# (the reserves are sized for the full run; QUICK runs are small, they get WANT)
lim() {
    if [[ $QUICK == 1 ]]; then
        echo "$1"
        return
    fi
    local l=$(($(remaining) - $2))
    ((l > $1)) && l=$1
    ((l < MIN_STEP_S)) && l=$MIN_STEP_S
    echo "$l"
}

cleanup() {
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null; fi
    if [[ $KEEP_WORK != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- the figure reader: one python file in the work folder ----------------------------------
cat >"$WORK/figures.py" <<'PYEOF'
"""Key figures from one command's stdout (and the GPU samples); kept in state.json for ratios."""
import json
import re
import statistics
import sys
from pathlib import Path


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def f(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def train(text, epochs_asked, spe, batch):
    d = last_json(text) or {}
    ep, sec = d.get("epochs"), d.get("seconds")
    steps_per_epoch = -(-int(spe) // int(batch))
    fig = {"epochs": ep, "seconds": sec, "best_val_dice": d.get("best")}
    if ep and sec:
        fig["steps_per_s"] = ep * steps_per_epoch / sec
        fig["epochs_per_s"] = ep / sec
    line = (f"epochs={f(ep)}/{epochs_asked} steps={f(ep and ep * steps_per_epoch)} "
            f"train_s={f(sec, 1)} steps/s={f(fig.get('steps_per_s'), 2)} "
            f"epochs/s={f(fig.get('epochs_per_s'), 3)} best_val_dice={f(d.get('best'), 4)}")
    return fig, line


def evaluate(text):
    try:
        d = json.loads(text[text.index("{"):])
    except ValueError:
        return {}, "no JSON in stdout"
    fig = {k: d.get(k) for k in ("foreground_dice", "pixel_accuracy", "mean_iou")}
    return fig, (f"heldout_dice={f(fig['foreground_dice'], 4)} acc={f(fig['pixel_accuracy'], 4)}"
                 f" mIoU={f(fig['mean_iou'], 4)} images={d.get('images')}")


def inference(text):
    rows = {}
    for m in re.finditer(r"^\s+(.+?)\s+([\d.]+) ms\s+speed vs naive:\s+([\d.]+)x", text, re.M):
        rows[m.group(1).strip()] = float(m.group(2))
    short = {"naive": "naive (1 tile/pass, no_grad)", "batch1": "predict batch 1",
             "batch4": "predict batch 4", "whole": "whole image, no tiling"}
    fig = {k: rows.get(v) for k, v in short.items()}
    head = text.strip().splitlines()[0] if text.strip() else ""
    line = " ".join(f"{k}={f(v, 1)}ms" for k, v in fig.items())
    if fig["naive"] and fig["batch4"]:
        line += f" batch4_vs_naive={fig['naive'] / fig['batch4']:.2f}x"
    return fig, f"{line} [{head}]"


def bigcpu(text):
    fig = {}
    for m in re.finditer(r"block-wise (\d+)\^2\s+peak RSS\s+(\d+) MB\s+([\d.]+) s\s+\(([\d.]+) Mpx/s\)",
                         text):
        fig[m.group(1)] = {"rss_mb": float(m.group(2)), "seconds": float(m.group(3)),
                           "mpx_s": float(m.group(4))}
    m = re.search(r"imports \+ model only\s+peak RSS\s+(\d+) MB", text)
    floor = m.group(1) if m else "n/a"
    line = " ".join(f"{s}^2: {v['seconds']:.1f}s {v['mpx_s']:.2f}Mpx/s rss={v['rss_mb']:.0f}MB"
                    for s, v in fig.items())
    return fig, f"{line or 'no block-wise row'} (floor rss={floor}MB)"


def bigdev(text):
    fig = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            fig[str(d["size"])] = d
    line = " ".join(f"{s}^2: rc={d.get('rc')} {f(d.get('seconds'), 1)}s {f(d.get('mpx_s'), 2)}Mpx/s "
                    + (f"gpu_peak={d['gpu_peak_mb']:.0f}MB " if d.get("gpu_peak_mb") is not None else "")
                    + f"rss={f(d.get('rss_mb'), 0)}MB "
                    f"(input made in {f(d.get('make_s'), 1)}s)" for s, d in fig.items())
    return fig, line or "no result line"


def synth(text, steps_asked, time_limit):
    d = last_json(text) or {}
    st, sec = d.get("steps"), d.get("seconds")
    # "seconds" is the whole run (start-up, training, end checkpoint, quality readout); a run
    # stopped by --time-limit trained for about time_limit seconds, so that rate is the cleaner one
    limited = bool(st) and st < int(steps_asked)
    rate = (st / float(time_limit)) if limited else (st / sec) if st and sec else None
    fig = {"steps": st, "seconds": sec, "ssim": d.get("ssim"), "psnr": d.get("psnr"),
           "steps_per_s": rate, "steps_per_s_end_to_end": (st / sec) if st and sec else None}
    feat, what = d.get("fid"), "fid"
    if feat is None:
        feat, what = d.get("feature_distance"), "feature_distance"
    if isinstance(feat, dict):
        feat = feat.get("value", feat.get("distance"))
    how = f"steps/{time_limit}s limit" if limited else "steps/run seconds"
    line = (f"steps={f(st)}/{steps_asked} run_s={f(sec, 1)} steps/s={f(rate, 2)} ({how}; "
            f"end-to-end {f(fig['steps_per_s_end_to_end'], 2)})")
    if d.get("ssim") is not None:
        line += (f" heldout ssim={f(d.get('ssim'), 3)} psnr={f(d.get('psnr'), 2)} "
                 f"{what}={f(feat, 3) if isinstance(feat, (int, float)) else feat}")
    return fig, line


def p2pspeed(text):
    m = re.search(r"new \(contiguous NCHW\)\s+median ([\d.]+) s/step", text)
    r = re.search(r"old / new = ([\d.]+)x", text)
    fig = {"new_s_step": float(m.group(1)) if m else None, "old_over_new": float(r.group(1)) if r else None}
    return fig, f"new={f(fig['new_s_step'])}s/step old/new={f(fig['old_over_new'], 2)}x"


def smi(text):
    drv = re.search(r"Driver Version:\s*(\S+)", text)
    cu = re.search(r"CUDA Version:\s*(\S+)", text)
    gpus = re.findall(r"^\|\s+\d+\s+(.+?)\s{2,}(?:On|Off)\s+\|", text, re.M)
    return {}, (f"gpus={gpus} driver={drv.group(1) if drv else 'n/a'} "
                f"cuda={cu.group(1) if cu else 'n/a'}")


def env(text):
    lines = [ln[len("figures: "):] for ln in text.splitlines() if ln.startswith("figures: ")]
    return {}, " ".join(lines) or "no figures line"


def gpu_window(csv, t0, t1):
    util, mem = [], []
    try:
        rows = Path(csv).read_text().splitlines()
    except OSError:
        return ""
    for row in rows:
        parts = [p.strip() for p in row.split(",")]
        try:
            t, u, m = float(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            continue
        if t0 <= t <= t1:
            util.append(u)
            mem.append(m)
    if not util:
        return ""
    return f" | gpu util mean={statistics.mean(util):.0f}% max_mem={max(mem):.0f}MiB ({len(util)} samples)"


def ratios(state):
    s = json.loads(Path(state).read_text()) if Path(state).exists() else {}
    out = []

    def get(name, *keys):
        v = s.get(name)
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def ratio(label, a, b, fmt="{:.2f}x"):
        out.append(f"{label}: " + (fmt.format(a / b) if a and b else "n/a"))

    ratio("2  train steps/s, device / CPU (same recipe, same run)",
          get("2a", "steps_per_s"), get("2d", "steps_per_s"))
    a, b = get("2b", "foreground_dice"), get("2c", "foreground_dice")
    out.append("2  held-out membrane Dice, new model vs bundled: "
               + (f"{a:.4f} vs {b:.4f} ({a - b:+.4f})" if a is not None and b is not None else "n/a"))
    for k in ("naive", "batch4", "whole"):
        ratio(f"3  inference_speed {k}, CPU ms / device ms", get("3b", k), get("3a", k))
    big = s.get("3d") or {}
    cpu = s.get("3c") or {}
    for size, d in big.items():
        if cpu:
            csize = min(cpu, key=int)
            ratio(f"3  block-wise Mpx/s, device {size}^2 / CPU {csize}^2 (big_image.py, 2 threads)",
                  d.get("mpx_s"), cpu[csize].get("mpx_s"))
    ratio("4  pix2pix synth train steps/s, device / CPU (same settings)",
          get("4a", "steps_per_s"), get("4b", "steps_per_s"))
    return "\n".join(out)


def main():
    kind = sys.argv[1]
    if kind == "ratios":
        print(ratios(sys.argv[2]))
        return
    if kind == "gpu":
        print(gpu_window(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])), end="")
        return
    name, stdout, state = sys.argv[2], sys.argv[3], sys.argv[4]
    text = Path(stdout).read_text(errors="replace") if Path(stdout).exists() else ""
    fig, line = globals()[kind](text, *sys.argv[5:])
    st = json.loads(Path(state).read_text()) if Path(state).exists() else {}
    st[name] = fig
    Path(state).write_text(json.dumps(st))
    print(line)


main()
PYEOF

# --- running one command ----------------------------------------------------------------------
summary() { echo "$*" | tee -a "$SUMMARY"; }

# run_cmd STEP_LOG ID LABEL LIMIT_S FIGURE_KIND [FIGURE_ARGS...] -- COMMAND...
# Runs COMMAND under `timeout` (at most the budget left), appends its stdout and stderr to
# STEP_LOG, and writes one summary line. Sets RC (0, or 124 timeout, 125 skipped...).
run_cmd() {
    local log=$1 id=$2 label=$3 limit=$4 kind=$5
    shift 5
    local fargs=()
    while [[ $# -gt 0 && $1 != -- ]]; do fargs+=("$1"); shift; done
    shift
    local rem so se t0 t1 dt status figs gpu
    rem=$(remaining)
    so=$WORK/$id.stdout
    se=$WORK/$id.stderr
    if ((rem < MIN_STEP_S)); then
        RC=125
        printf '\n=== %s %s: SKIPPED (%ss of the suite budget left) ===\n$ %s\n' \
            "$id" "$label" "$rem" "$*" >>"$log"
        summary "$(printf '%-3s %-18s %-8s %7s  %s' "$id" "$label" SKIPPED "-" "no time left (${rem}s)")"
        return 0
    fi
    ((limit > rem)) && limit=$rem
    printf '\n=== %s %s (timeout %ss) ===\n$ %s\n' "$id" "$label" "$limit" "$*" >>"$log"
    t0=$(now)
    timeout -k 10 "$limit" "$@" >"$so" 2>"$se" </dev/null
    RC=$?
    t1=$(now)
    dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $RC in
        0) status=OK ;;
        124 | 137) status=TIMEOUT ;;
        *) status=FAILED ;;
    esac
    {
        echo "--- stdout ---"
        cat "$so"
        echo "--- stderr ---"
        cat "$se"
        echo "--- $status rc=$RC ${dt}s ---"
    } >>"$log"
    figs=$("$PY" "$WORK/figures.py" "$kind" "$id" "$so" "$STATE" "${fargs[@]}" 2>&1 | tail -n 1)
    gpu=$("$PY" "$WORK/figures.py" gpu "$SMI_CSV" "$t0" "$t1" 2>/dev/null)
    if [[ $status != OK ]]; then
        figs="$figs | rc=$RC: $(grep -v '^\s*$' "$se" | tail -n 1 | cut -c1-160)"
    fi
    summary "$(printf '%-3s %-18s %-8s %6ss  %s%s' "$id" "$label" "$status" "$dt" "$figs" "$gpu")"
}

skip_line() { # skip_line STEP_LOG ID LABEL REASON
    printf '\n=== %s %s: SKIPPED: %s ===\n' "$2" "$3" "$4" >>"$1"
    summary "$(printf '%-3s %-18s %-8s %7s  %s' "$2" "$3" SKIPPED "-" "$4")"
}

: >"$SUMMARY"
summary "gpu_suite $(date -u +%Y-%m-%dT%H:%M:%SZ)  QUICK=$QUICK DEVICE=$DEVICE budget=${SUITE_BUDGET}s host=${HOSTNAME:-?} cores=$(getconf _NPROCESSORS_ONLN)"

# === 1. environment ==========================================================================
LOG1=$OUT/1_env.log
: >"$LOG1"
if command -v nvidia-smi >/dev/null; then
    run_cmd "$LOG1" 1a nvidia-smi 30 smi -- nvidia-smi
    # one GPU sample a second for the whole suite (stopped by the EXIT trap)
    (
        while :; do
            s=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits \
                2>/dev/null | head -n 1)
            [[ -n $s ]] && echo "$(date +%s.%N),$s"
            sleep 1
        done
    ) >"$SMI_CSV" 2>/dev/null &
    SAMPLER_PID=$!
else
    skip_line "$LOG1" 1a nvidia-smi "nvidia-smi not found"
fi

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    run_cmd "$LOG1" 1b carried-wheels 120 env -- "$PY" -m pip install -q --no-index --no-deps \
        --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    [[ $RC == 0 ]] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if ! "$PY" -c "import napari_segen.cli" >/dev/null 2>&1; then
    run_cmd "$LOG1" 1c pip-install-e 120 env -- \
        "$PY" -m pip install -q --timeout 10 --retries 0 -e .
    if [[ $RC != 0 ]] || ! "$PY" -c "import napari_segen.cli" >/dev/null 2>&1; then
        summary "    pip install -e . did not make napari_segen importable (no internet?); trying PYTHONPATH=src"
        export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
    fi
fi

cat >"$WORK/env_check.py" <<'PYEOF'
import platform
import sys

import torch
import torchvision

print("python", sys.version.replace("\n", " "), platform.platform())
print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda build", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
avail = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if avail else "-"
print("cuda available", avail, "devices", torch.cuda.device_count(), "name", name)
if avail:
    p = torch.cuda.get_device_properties(0)
    print("capability", f"{p.major}.{p.minor}", "memory GiB", round(p.total_memory / 2**30, 1),
          "SMs", p.multi_processor_count, "bf16", torch.cuda.is_bf16_supported())
import napari_segen
from napari_segen.training.run import TrainingRun

print("napari_segen", napari_segen.__version__, "from", napari_segen.__file__)
dev = sys.argv[1]
try:  # what training does with its defaults (amp=True, channels_last=True) on this device
    run = TrainingRun(None, device=dev, amp=True, channels_last=True, save_last=False)
    amp, cl = run.amp, run.channels_last
    print("TrainingRun on", dev, "-> device", run.device, "amp", amp, "channels_last", cl)
except Exception as err:  # noqa: BLE001  (a bad device is reported, not fatal here)
    amp, cl = f"error({type(err).__name__}: {err})", "-"
    print("TrainingRun on", dev, "failed:", err)
mods = []
for mod in ("numpy", "scipy", "skimage", "tifffile", "imageio", "PIL", "safetensors",
            "torchmetrics", "tqdm", "zarr", "dask", "distributed", "torch_fidelity"):
    try:
        m = __import__(mod)
        mods.append(f"{mod}={getattr(m, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        mods.append(f"{mod}=MISSING({type(err).__name__})")
print("modules", " ".join(mods))
print(f"figures: gpu={name!r} torch={torch.__version__} torchvision={torchvision.__version__} "
      f"cuda_available={avail} train_on_{dev}: amp={amp} channels_last={cl} "
      f"zarr={'MISSING' not in mods[9]}")
PYEOF
run_cmd "$LOG1" 1d python-torch 90 env -- "$PY" "$WORK/env_check.py" "$DEVICE"
if [[ $RC != 0 ]]; then
    summary "STOP: python/torch or napari_segen is not usable here (pip install -e . failed, PYTHONPATH=src too); see 1_env.log"
    exit 1
fi
if [[ $DEVICE == cuda* ]] && ! grep -q "cuda available True" "$WORK/1d.stdout"; then
    summary "    WARNING: DEVICE=$DEVICE but torch.cuda.is_available() is False: the CUDA steps will fail"
fi

# === 2. the bundled model's recipe on the device, held-out Dice =============================
LOG2=$OUT/2_train.log
: >"$LOG2"
RECIPE=(--images "$ISBI/train/images" --masks "$ISBI/train/masks" --mask-map "0:1,255:0"
    --classes "cell interior,membrane" --val-split 0.2 --depth 4 --base-channels 16
    --lr 2e-3 --patience 0 --seed 0 --quiet --overwrite)
if [[ $QUICK == 1 ]]; then
    EPOCHS=2 SPE=8 CPU_EPOCHS=1 TLIM=60
else
    EPOCHS=50 SPE=64 CPU_EPOCHS=1
    # the time limit leaves room for the steps after it
    TLIM=$(($(remaining) - 330))
    ((TLIM > TRAIN_TIME)) && TLIM=$TRAIN_TIME
    ((TLIM < 30)) && TLIM=30
fi
summary "    2: recipe --epochs $EPOCHS --samples-per-epoch $SPE --batch-size 4 --crop-size 256, --time-limit $TLIM s on $DEVICE"
run_cmd "$LOG2" 2a "train-$DEVICE" $((TLIM + 40)) train "$EPOCHS" "$SPE" 4 -- \
    "${SEGEN[@]}" train "${RECIPE[@]}" --epochs "$EPOCHS" --samples-per-epoch "$SPE" \
    --time-limit "$TLIM" --device "$DEVICE" --out "$WORK/train/isbi-gpu.safetensors"
if [[ -f $WORK/train/isbi-gpu.json ]]; then
    "$PY" - "$WORK/train/isbi-gpu.json" >>"$LOG2" 2>&1 <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))["provenance"]
print("model json: config amp/channels_last/device =", p["config"].get("amp"),
      p["config"].get("channels_last"), p["config"].get("device"), "| best_epoch", p.get("best_epoch"),
      "epochs_run", p.get("epochs_run"), "| val", p.get("val_metrics"))
PYEOF
fi
EVAL=(--images "$ISBI/test/images" --masks "$ISBI/test/masks" --mask-map "0:1,255:0"
    --device "$DEVICE" --json)
if [[ -f $WORK/train/isbi-gpu.safetensors ]]; then
    run_cmd "$LOG2" 2b eval-new-model 60 evaluate -- \
        "${SEGEN[@]}" evaluate --model "$WORK/train/isbi-gpu.safetensors" "${EVAL[@]}"
else
    skip_line "$LOG2" 2b eval-new-model "no model written by 2a"
fi
run_cmd "$LOG2" 2c eval-bundled 60 evaluate -- "${SEGEN[@]}" evaluate --model default "${EVAL[@]}"
# baseline: the same recipe on the CPU for a couple of epochs (steps/s of the same run)
if (($(remaining) > 360)) || [[ $QUICK == 1 ]]; then
    run_cmd "$LOG2" 2d train-cpu-baseline 60 train "$CPU_EPOCHS" "$SPE" 4 -- \
        "${SEGEN[@]}" train "${RECIPE[@]}" --epochs "$CPU_EPOCHS" --samples-per-epoch "$SPE" \
        --device cpu --out "$WORK/train/isbi-cpu.safetensors"
else
    skip_line "$LOG2" 2d train-cpu-baseline "kept the time for steps 3-4 ($(remaining)s left)"
fi

# === 3. inference speed =======================================================================
LOG3=$OUT/3_inference.log
: >"$LOG3"
if [[ $QUICK == 1 ]]; then
    INF=(--size 512 --rounds 1)
    BIG_CPU=(--sizes 512)
    BIG_DEV=(512 1024)
else
    INF=(--size 1024 --rounds 3)
    BIG_CPU=(--sizes 4096)
    BIG_DEV=(4096 16384)
fi
run_cmd "$LOG3" 3a "infer-$DEVICE" "$(lim 60 250)" inference -- \
    "$PY" benchmarks/inference_speed.py "${INF[@]}" --device "$DEVICE"
run_cmd "$LOG3" 3b infer-cpu "$(lim 75 230)" inference -- \
    "$PY" benchmarks/inference_speed.py "${INF[@]}" --device cpu
run_cmd "$LOG3" 3c big-image-cpu "$(lim 60 200)" bigcpu -- \
    "$PY" benchmarks/big_image.py "${BIG_CPU[@]}" --workdir "$WORK/big_cpu"

# benchmarks/big_image.py runs its children on the CPU (device="cpu" is written in it), so the
# device run uses its input and model with `napari-segen predict` (block-wise on zarr).
cat >"$WORK/big_device.py" <<'PYEOF'
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
import big_image  # noqa: E402  (its make_input / make_model)
import torch  # noqa: E402

from napari_segen.cli import main as segen  # noqa: E402

work, device, width = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
work.mkdir(parents=True, exist_ok=True)
model = big_image.make_model(work / "small-unet.safetensors", width)
print(f"block 2048, tile predict's default, random U-Net depth 2 width {width}, device {device}",
      file=sys.stderr)
for size in map(int, sys.argv[4:]):
    inp, out = work / f"in_{size}.zarr", work / f"out_{size}.zarr"
    t = time.perf_counter()
    big_image.make_input(inp, size)
    make_s = time.perf_counter() - t
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rc = segen(["predict", str(inp), "--model", str(model), "--out", str(out), "--device", device,
                "--block-size", "2048", "--quiet", "--overwrite"])
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    row = {"size": size, "rc": rc, "seconds": sec, "mpx_s": size * size / 1e6 / sec,
           "make_s": make_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None}
    print(json.dumps(row))
    if rc != 0:
        sys.exit(rc)
PYEOF
if "$PY" -c "import zarr" >/dev/null 2>&1; then
    run_cmd "$LOG3" 3d "big-image-$DEVICE" "$(lim 130 170)" bigdev -- \
        "$PY" "$WORK/big_device.py" "$WORK/big_dev" "$DEVICE" 8 "${BIG_DEV[@]}"
else
    skip_line "$LOG3" 3d "big-image-$DEVICE" "zarr is not installed (carry its wheels in .whl/, see the header)"
fi

# === 4. pix2pix at the paper's size ===========================================================
LOG4=$OUT/4_pix2pix.log
: >"$LOG4"
P2P=(--images "$ISBI/train/images" --masks "$ISBI/train/masks" --mask-map "0:1,255:0"
    --classes "cell interior,membrane" --preset pix2pix --batch-size 1
    --sample-every 0 --checkpoint-every 0 --seed 0 --quiet --overwrite)
if [[ $QUICK == 1 ]]; then
    P2P_SIZE=(--crop-size 64 --ngf 8 --ndf 8)
    STLIM=15 CPU_STLIM=8 P2P_STEPS=10
else
    P2P_SIZE=(--crop-size 256 --ngf 64 --ndf 64)
    STLIM=$(($(remaining) - 110)) # leaves ~30 s for the quality readout, ~70 s for the baseline
    ((STLIM > SYNTH_TIME)) && STLIM=$SYNTH_TIME
    ((STLIM < 20)) && STLIM=20
    CPU_STLIM=20 P2P_STEPS=100000
fi
summary "    4: synth train ${P2P_SIZE[*]} --batch-size 1 --preset pix2pix --steps $P2P_STEPS, --time-limit $STLIM s on $DEVICE, $CPU_STLIM s on cpu"
run_cmd "$LOG4" 4a "pix2pix-$DEVICE" $((STLIM + 60)) synth "$P2P_STEPS" "$STLIM" -- \
    "${SEGEN[@]}" synth train "${P2P[@]}" "${P2P_SIZE[@]}" --steps "$P2P_STEPS" --time-limit "$STLIM" \
    --device "$DEVICE" --out "$WORK/p2p/gen-dev.safetensors"
run_cmd "$LOG4" 4b pix2pix-cpu-base $((CPU_STLIM + 45)) synth "$P2P_STEPS" "$CPU_STLIM" -- \
    "${SEGEN[@]}" synth train "${P2P[@]}" "${P2P_SIZE[@]}" --steps "$P2P_STEPS" \
    --time-limit "$CPU_STLIM" --no-eval \
    --device cpu --out "$WORK/p2p/gen-cpu.safetensors"
if [[ $DEVICE == cpu ]]; then
    if [[ $QUICK == 1 ]]; then
        SPEED=(--crop 64 --ngf 8 --ndf 8 --rounds 1 --steps 1 --threads 1)
    else
        SPEED=(--crop 256 --ngf 64 --ndf 64 --rounds 3 --steps 2 --threads "$(getconf _NPROCESSORS_ONLN)")
    fi
    run_cmd "$LOG4" 4c pix2pix_speed.py 60 p2pspeed -- "$PY" benchmarks/pix2pix_speed.py "${SPEED[@]}"
else
    skip_line "$LOG4" 4c pix2pix_speed.py "CPU-only script (no --device option); see 4a/4b instead"
fi

# === 5. ratios ================================================================================
summary "ratios (against baselines of this run):"
"$PY" "$WORK/figures.py" ratios "$STATE" 2>&1 | sed 's/^/    /' | tee -a "$SUMMARY"
summary "total $(elapsed)s of ${SUITE_BUDGET}s; logs in $OUT"
