#!/usr/bin/env bash
# A full brcatool run as a shell script: every stage reads and writes artifacts in one workdir,
# so each line can be re-run, resumed or replaced on its own.
#
#   examples/run_all.sh [WORKDIR]        (default ./brcatool-work; needs `brcatool` on PATH,
#                                         e.g. `source .venv/bin/activate` after `make demo`)
#
# With real data, replace the synth line by your slides/, expression and clinical tables and use
# `--weights imagenet` (or `--weights /path/to/resnet50.pth` behind a firewall).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-brcatool-work}
COHORT=$WORK/cohort
export BRCATOOL_WORKDIR=$WORK          # every command below uses this workdir

[ -f "$COHORT/truth/truth.json" ] || brcatool synth "$COHORT" --patients 60 --seed 0
brcatool tile "$COHORT/slides" --patches 8 --sampling random --mpp 0.5 --workers 2
brcatool embed --encoder resnet50 --weights random
brcatool prep-expr --expression "$COHORT/expression.tsv" --clinical "$COHORT/clinical.tsv" \
  --task luminal-vs-basalher2
brcatool train --config "$HERE/config.yaml" --fusion xattn --folds 5 --name xattn \
  --epochs 60 --patience 15   # a small cohort: few steps per epoch, so train longer
brcatool evaluate --run xattn --bootstrap 500
brcatool ablate --config "$HERE/config.yaml" --fusions gene,image,concat,late,xattn --sanity --name paper \
  --epochs 60 --patience 15
