#!/usr/bin/env bash
# Install xmodal into .venv, index SOURCE folders into a collection, and run one search.
#
#   scripts/quickstart.sh ~/Pictures ~/notes            # model from XMODAL_CLIP_* (default ViT-B-32/laion2b)
#   XMODAL_CLIP_PRETRAINED=/models/vit-b-32.bin scripts/quickstart.sh ~/Pictures   # offline: local checkpoint
#   scripts/quickstart.sh --demo                        # offline plumbing check: random-weights tiny models
#
# Env: XMODAL_HOME (data dir, default ./xmodal-data), XMODAL_COLLECTION (default "media"),
#      XMODAL_QUERY (the search to run at the end, default "a photo").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
[ -x "$repo/.venv/bin/python" ] || "$python" -m venv "$repo/.venv"
"$repo/.venv/bin/python" -m pip install --quiet --upgrade pip
"$repo/.venv/bin/python" -m pip install --quiet -e "$repo[audio]"
xmodal="$repo/.venv/bin/xmodal"
collection=${XMODAL_COLLECTION:-media}
query=${XMODAL_QUERY:-a photo}

if [ "${1:-}" = "--demo" ]; then
  demo=${XMODAL_HOME:-$PWD/xmodal-data}/demo
  echo "demo: tiny open_clip and CLAP models with RANDOM weights (plumbing check, not search quality) in $demo"
  "$repo/.venv/bin/python" "$repo/scripts/make_tiny_clip.py" "$demo/model" >/dev/null
  "$repo/.venv/bin/python" "$repo/scripts/make_tiny_clap.py" "$demo/clap" >/dev/null 2>&1
  "$repo/.venv/bin/python" -c "from xmodal.bench import generate_photos, generate_sounds; from pathlib import Path; \
generate_photos(Path('$demo/media'), 48, size=(320, 240)); generate_sounds(Path('$demo/media'), 12)"
  export XMODAL_CLIP_MODEL="$demo/model/xmodal-tiny-clip.json"
  export XMODAL_CLIP_PRETRAINED="$demo/model/xmodal-tiny-clip.pt"
  export XMODAL_AUDIO_MODEL="$demo/clap"
  set -- "$demo/media"
fi
if [ "$#" -eq 0 ]; then
  echo "usage: scripts/quickstart.sh SOURCE... | --demo" >&2
  exit 2
fi
"$xmodal" index "$@" --collection "$collection"
echo
echo "\$ xmodal search --collection $collection --text \"$query\" -k 5"
"$xmodal" search --collection "$collection" --text "$query" -k 5
echo
echo "\$ xmodal stats --collection $collection"
"$xmodal" stats --collection "$collection"
echo
echo "next: $xmodal serve --collection $collection   # web page and API on http://127.0.0.1:8000"
