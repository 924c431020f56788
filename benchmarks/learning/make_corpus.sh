#!/usr/bin/env bash
# Build the unlabeled pretraining corpus from Debian packages: 16 kHz mono FLAC, 3-15 s per file.
#
#   benchmarks/learning/make_corpus.sh OUT [HOURS]      (HOURS: about the total, default 3)
#   JOBS=1 benchmarks/learning/make_corpus.sh ...       (parallel workers, default 2)
#
# OUT/speech_real  real human speech: asterisk-prompt-{es-co,fr-armelle,it-menardi-wav},
#                  tuxpaint stamp descriptions (8+ languages), ktuberling spoken words
# OUT/speech_tts   flite (5 voices) + festival (12 voices, en/it/cs/fi/ru/ca) reading text from
#                  fortunes-min and installed gettext catalogs
# OUT/music        random multi-track MIDI (all GM programs, drums, tempos, scales) rendered by
#                  fluidsynth with TimGM6mb.sf2 / MuseScore_General_Full.sf3
# OUT/sounds       sound themes and game sound effects
# Budget: TTS 30 %, music 30 %, real speech 25 %, sounds 15 % of HOURS (real speech and sounds are
# capped by what the packages hold). Re-running skips files that exist.
# Last step (corpus.py pack): in every folder above (one voice / language / speaker / package), clips
# under 3 s are concatenated in a seeded shuffled order, with 0.1-0.4 s of silence between them, into
# <folder>/packed/NNNN.flac of about 4-10 s (never over 15 s), and deleted; <folder>/packed/MEMBERS.tsv
# lists the members, and the builders treat listed clips as existing. A folder whose short clips make
# less than 3 s keeps a 2.1-3 s pack and drops a shorter one.
#
# HELD OUT, never installed or used: asterisk-core-sounds-*, fluid-soundfont-gm, fluid-soundfont-gs,
# fluidr3mono-gm-soundfont, espeak-ng, mbrola (and voices depending on them).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # The header above is the help.
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ ${1:-} == -* ]]; then
  echo "make_corpus.sh: unknown option $1 (usage: make_corpus.sh OUT [HOURS]; --help)" >&2
  exit 2
fi
OUT=${1:?usage: make_corpus.sh OUT [HOURS]}
HOURS=${2:-3}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}

PKGS=(flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k
  festvox-itapc16k festvox-ca-ona-hts festvox-czech-dita festvox-czech-machac festvox-czech-krb
  festvox-ru festvox-suopuhe-lj festvox-suopuhe-mv fluidsynth timgm6mb-soundfont
  musescore-general-soundfont sox fortunes-min
  asterisk-prompt-es-co asterisk-prompt-fr-armelle asterisk-prompt-it-menardi-wav
  tuxpaint-stamps-default tuxpaint-data ktuberling-data
  sound-theme-freedesktop yaru-theme-sound oxygen-sounds deepin-sound-theme heroes-sound-effects
  colobot-common-sounds alienblaster-data chromium-bsu-data lomiri-sounds)
MISSING=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
done
if ((${#MISSING[@]})); then
  echo "installing: ${MISSING[*]}"
  # --no-install-recommends: fluidsynth recommends fluid-soundfont-gm, festival recommends espeak-ng-based bits
  SIM=$(apt-get install -s -y --no-install-recommends "${MISSING[@]}" | awk '/^Inst/{print $2}')
  if echo "$SIM" | grep -E -q '^(asterisk-core-sounds|fluid-soundfont|fluidr3mono|espeak|mbrola)'; then
    echo "refusing: a held-out package would be pulled in:"; echo "$SIM" | grep -E '^(asterisk-core|fluid-sound|fluidr3|espeak|mbrola)'
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${MISSING[@]}"
fi
"$PY" -c "import mido, soundfile, soxr" 2>/dev/null || "$PY" -m pip install -q mido soundfile soxr

SEC=$("$PY" -c "print(float('$HOURS') * 3600)")
pct() { "$PY" -c "print($SEC * $1)"; }
mkdir -p "$OUT"
cd "$HERE"
echo "== corpus -> $OUT (HOURS=$HOURS, JOBS=$JOBS)"
nice -n 10 "$PY" corpus.py speech_real "$OUT" "$(pct 0.25)" --jobs "$JOBS"
nice -n 10 "$PY" corpus.py sounds "$OUT" "$(pct 0.15)" --jobs "$JOBS"
nice -n 10 "$PY" corpus.py tts "$OUT" "$(pct 0.30)" --jobs "$JOBS"
nice -n 10 "$PY" corpus.py music "$OUT" "$(pct 0.30)" --jobs "$JOBS"
echo "== pack clips < 3 s"
nice -n 10 "$PY" corpus.py pack "$OUT"
echo "== summary"
"$PY" corpus.py summary "$OUT" | tee "$OUT/SUMMARY.txt"
