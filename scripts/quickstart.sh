#!/usr/bin/env bash
# Install xmodal into .venv, index SOURCE folders into a collection, and run one search.
#
#   scripts/quickstart.sh ~/Pictures ~/notes            # model from XMODAL_CLIP_* (default ViT-B-32/laion2b)
#   XMODAL_CLIP_PRETRAINED=/models/vit-b-32.bin scripts/quickstart.sh ~/Pictures   # offline: local checkpoint
#   scripts/quickstart.sh --demo                        # offline plumbing check: random-weights tiny models,
#                                                       # in its own collection "demo"
#
# Env: XMODAL_HOME (data dir, default: the user data dir, ~/.local/share/xmodal on Linux),
#      XMODAL_COLLECTION (default "media"; "demo" for --demo), XMODAL_QUERY (the search run at the end,
#      default "a photo"), XMODAL_PYTHON (a Python where xmodal is installed already: no .venv, no install).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${XMODAL_PYTHON:-}" ]; then
  py=$XMODAL_PYTHON
else
  python=${PYTHON:-python3}
  [ -x "$repo/.venv/bin/python" ] || "$python" -m venv "$repo/.venv"
  "$repo/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$repo/.venv/bin/python" -m pip install --quiet -e "$repo[audio]"
  py="$repo/.venv/bin/python"
fi
xmodal="$(dirname "$py")/xmodal"
query=${XMODAL_QUERY:-a photo}

if [ "${1:-}" = "--demo" ]; then
  # random weights: a collection of its own, so that a real run into "media" later meets no other model
  collection=${XMODAL_COLLECTION:-demo}
  demo="$("$py" -c 'from xmodal.config import Settings; print(Settings().home)')/demo-files"
  echo "demo: tiny open_clip and CLAP models with RANDOM weights (plumbing check, not search quality) in $demo, collection $collection"
  "$py" "$repo/scripts/make_tiny_clip.py" "$demo/model" >/dev/null
  "$py" "$repo/scripts/make_tiny_clap.py" "$demo/clap" >/dev/null 2>&1
  "$py" -c "from xmodal.bench import generate_photos, generate_sounds; from pathlib import Path; \
generate_photos(Path('$demo/media'), 48, size=(320, 240)); generate_sounds(Path('$demo/media'), 12)"
  export XMODAL_CLIP_MODEL="$demo/model/xmodal-tiny-clip.json"
  export XMODAL_CLIP_PRETRAINED="$demo/model/xmodal-tiny-clip.pt"
  export XMODAL_AUDIO_MODEL="$demo/clap"
  set -- "$demo/media"
else
  collection=${XMODAL_COLLECTION:-media}
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
