#!/usr/bin/env bash
# Wheels for a bare GPU machine that cannot reach a package index (issue 15, GPU part).
#
# The lent GPU machine has Python 3.12 with torch, torchvision, numpy, scipy, pandas, tqdm,
# tabulate, matplotlib, einops, safetensors, huggingface_hub and joblib, but none of the
# libraries below, and no network. Run this here (where pip reaches PyPI) just before the
# device call: it builds brainbench's own wheel from this tree and downloads the missing
# libraries, at the versions of this .venv, as cp312 manylinux wheels into .whl/ (ignored by
# git). scripts/gpu_paper_profile.sh installs them there with --no-index --no-deps.
#
#   scripts/gpu_wheels.sh            # then carry .whl with the device call
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
LIMIT_MB=${LIMIT_MB:-56}  # the device call carries at most 64 MiB with the working tree
rm -rf "$DEST" && mkdir -p "$DEST"

# the run's libraries the GPU image lacks (or holds at another version), with their own needs
NAMES="monai nibabel nilearn open_clip_torch ftfy wcwidth timm scikit-learn scikit-survival
ecos osqp numexpr narwhals optuna alembic colorlog Mako SQLAlchemy xlrd xlwt"
pins=$("$PY" - $NAMES <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" $pins
"$PY" -m pip wheel -q --no-deps -w "$DEST" .
ls -1 "$DEST"
size=$(du -sm "$DEST" | cut -f1)
echo "$DEST: $(ls "$DEST" | wc -l) wheels, ${size} MB (limit ${LIMIT_MB} MB)"
test "$size" -le "$LIMIT_MB" || { echo "too large to carry with the working tree" >&2; exit 2; }
