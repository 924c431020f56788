#!/usr/bin/env python
"""Pretraining corpus builder (called by make_corpus.sh) and shared helpers for make_tasks.py.

Every source is a Debian package (see README.md); everything is deterministic (seeded) and
resumable: an output file that exists (or that `pack` has packed) is never rewritten.

    python corpus.py speech_real OUT SECONDS
    python corpus.py sounds      OUT SECONDS
    python corpus.py tts         OUT SECONDS [--jobs 2]
    python corpus.py music       OUT SECONDS [--jobs 2]
    python corpus.py music_solo  OUT SECONDS [--jobs 2]   (optional, not in make_corpus.sh)
    python corpus.py pack        OUT            (last: packs clips < 3 s into OUT/**/packed/*.flac)
    python corpus.py summary     OUT

HELD OUT (never used here): asterisk-core-sounds-*, fluid-soundfont-gm/-gs, fluidr3mono-gm-soundfont,
and anything spoken by espeak-ng / mbrola.
"""

from __future__ import annotations

import argparse
import functools
import glob
import gettext
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf
import soxr

SR = 16000
MAX_S = 15.0
MIN_S = 1.0

# Only these two soundfonts (explicit paths, never the default-GM alternatives).
SOUNDFONTS = {
    "tim": "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "msg": "/usr/share/sounds/sf3/MuseScore_General_Full.sf3",
}
FORBIDDEN = ("fluid", "FluidR3", "asterisk/sounds/en", "core-sounds", "espeak", "mbrola")

# --- voices --------------------------------------------------------------------------------------
# name -> (engine, engine voice, language of its native text, text encoding for festival)
VOICES = {
    "flite_kal": ("flite", "kal", "en", None),
    "flite_kal16": ("flite", "kal16", "en", None),
    "flite_awb": ("flite", "awb", "en", None),
    "flite_rms": ("flite", "rms", "en", None),
    "flite_slt": ("flite", "slt", "en", None),
    "fest_kal": ("festival", "kal_diphone", "en", "ascii"),
    "fest_ked": ("festival", "ked_diphone", "en", "ascii"),
    "fest_slt_hts": ("festival", "cmu_us_slt_arctic_hts", "en", "ascii"),
    "fest_it_lp": ("festival", "lp_diphone", "it", "latin-1"),
    "fest_it_pc": ("festival", "pc_diphone", "it", "latin-1"),
    "fest_cs_dita": ("festival", "czech_dita", "cs", "iso-8859-2"),
    "fest_cs_krb": ("festival", "czech_krb", "cs", "iso-8859-2"),
    "fest_cs_machac": ("festival", "czech_machac", "cs", "iso-8859-2"),
    "fest_fi_lj": ("festival", "suo_fi_lj_diphone", "fi", "latin-1"),
    "fest_fi_mv": ("festival", "hy_fi_mv_diphone", "fi", "latin-1"),
    "fest_ru": ("festival", "msu_ru_nsh_clunits", "ru", "utf-8"),
    "fest_ca_ona": ("festival", "upc_ca_ona_hts", "ca", "latin-1"),
}


def h(s: str) -> int:
    return int(hashlib.md5(s.encode("utf-8")).hexdigest()[:12], 16)


def bucket(s: str, k: int = 10) -> str:
    """Deterministic 3-way split of any item (sentence, stamp, file): 1/k task-test, 1/k task-train,
    the rest corpus. Tasks never see corpus items."""
    r = h(s) % k
    return "task_test" if r == 0 else "task_train" if r == 1 else "corpus"


# --- audio helpers -------------------------------------------------------------------------------

def load_mono16k(path: str) -> np.ndarray:
    if path.endswith((".gsm", ".raw", ".ulaw", ".alaw")):
        wav = subprocess.run(["sox", path, "-t", "wav", "-b", "16", "-"], capture_output=True,
                             check=True).stdout
        x, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    else:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        x = soxr.resample(x, sr, SR).astype(np.float32)
    return x


def frame_rms(x: np.ndarray, hop: int = 320) -> np.ndarray:
    n = len(x) // hop
    if n == 0:
        return np.array([float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0])
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-20)


def trim(x: np.ndarray, db: float = 40.0, margin_s: float = 0.05) -> np.ndarray:
    r = frame_rms(x)
    if r.max() < 1e-4:
        return x[:0]
    on = np.nonzero(r > max(1e-4, r.max() * 10 ** (-db / 20)))[0]
    m = int(margin_s * SR)
    a, b = max(0, on[0] * 320 - m), min(len(x), (on[-1] + 1) * 320 + m)
    return x[a:b]


def silent(x: np.ndarray) -> bool:
    return len(x) == 0 or float(np.sqrt(np.mean(x ** 2))) < 3e-4


def pad_to(x: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    return np.pad(x, (0, n - len(x))) if len(x) < n else x


def fix_peak(x: np.ndarray, peak: float = 0.98) -> np.ndarray:
    p = float(np.abs(x).max()) if len(x) else 0.0
    return x * (peak / p) if p > peak else x


def write(path: str, x: np.ndarray):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    fmt = "FLAC" if path.endswith(".flac") else "WAV"
    sf.write(tmp, fix_peak(x), SR, format=fmt, subtype="PCM_16")
    os.replace(tmp, path)


def exists(p: str) -> bool:
    """True for an output that was written, also when `pack` has since packed (or dropped) it:
    reruns must not write it again."""
    return os.path.exists(p) or os.path.basename(p) in _packed_names(os.path.dirname(p))


def chunks(x: np.ndarray, rng: np.random.Generator, max_chunks: int) -> list[np.ndarray]:
    """Split a long signal into pieces of 4-12 s (at most max_chunks, spread over the file)."""
    if len(x) <= MAX_S * SR:
        return [x]
    out, pos = [], 0
    while pos < len(x) and len(out) < max_chunks:
        n = int(rng.uniform(4, 12) * SR)
        seg = x[pos:pos + n]
        if len(seg) >= MIN_S * SR:
            out.append(seg)
        pos += n + int(rng.uniform(0, 20) * SR)
    return out


# --- text ----------------------------------------------------------------------------------------

_BAD = re.compile(r"[%<>{}\[\]_\\/|@#$^&*=~`\"]|https?:|\.\.\.|\t")


def _clean(s: str) -> str | None:
    s = " ".join(s.replace("\n", " ").split())
    if not s or _BAD.search(s) or s.startswith("-") or " --" in s or "(" in s[:1]:
        return None
    return s


def fortunes() -> list[str]:
    out = []
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in os.path.basename(f):
            continue
        txt = open(f, encoding="utf-8", errors="ignore").read()
        for block in txt.split("\n%\n"):
            block = re.sub(r"\s+--.*$", "", block.strip(), flags=re.S)  # drop attributions
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(block.split())):
                out.append(sent)
    return out


def mo_strings(lang: str) -> tuple[list[str], list[str]]:
    """(translated strings, English msgids) from installed gettext catalogs."""
    tr, en = [], []
    for f in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
        try:
            cat = gettext.GNUTranslations(open(f, "rb"))._catalog
        except Exception:
            continue
        for k, v in cat.items():
            if isinstance(k, str) and k and isinstance(v, str):
                tr.append(v)
                en.append(k)
    return tr, en


def sentences(lang: str, split: str, min_w: int = 4, max_w: int = 28) -> list[str]:
    """Sorted, de-duplicated readable sentences of `lang` ('en' also uses fortunes) in split."""
    if lang == "en":
        raw = fortunes()
        for l2 in ("fr", "de", "es", "it"):
            raw += mo_strings(l2)[1]
    else:
        raw = mo_strings(lang)[0]
    seen, out = set(), []
    for s in raw:
        s = _clean(s)
        if s is None or s in seen:
            continue
        w = len(s.split())
        if min_w <= w <= max_w and sum(c.isalpha() for c in s) >= 0.6 * len(s.replace(" ", "")):
            seen.add(s)
            if bucket(s) == split:
                out.append(s)
    return sorted(out)


def encode_for(text: str, enc: str | None) -> str:
    if enc in (None, "ascii"):
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return text


# --- TTS -----------------------------------------------------------------------------------------

def synth_flite(voice: str, text: str, out_wav: str, stretch: float = 1.0, f0: float | None = None):
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}"]
    if f0:
        cmd += ["--setf", f"int_f0_target_mean={f0:.0f}"]
    subprocess.run(cmd + ["-t", encode_for(text, None), "-o", out_wav], check=True,
                   capture_output=True, timeout=120)


def synth_festival_batch(voice: str, enc: str, items: list[tuple[str, str, float]]):
    """items: (text, out_wav, duration_stretch); one festival process for the whole batch."""
    lines = [f"(voice_{voice})"]
    for text, out, st in items:
        t = encode_for(text, enc).replace('"', "").replace("\\", "")
        lines.append(f"(Parameter.set 'Duration_Stretch {st:.3f})")
        # unwind-protect: one utterance that festival cannot say must not end the batch
        lines.append(f'(unwind-protect (begin (set! u (utt.synth (Utterance Text "{t}"))) '
                     f'(utt.save.wave u "{out}" \'riff)) (format t "failed\\n"))')
    codec = "utf-8" if enc in ("utf-8", "ascii", None) else enc
    with tempfile.NamedTemporaryFile("wb", suffix=".scm", delete=False) as f:
        f.write(("\n".join(lines) + "\n").encode(codec, errors="ignore"))
        scm = f.name
    try:
        subprocess.run(["festival", "-b", scm], capture_output=True, timeout=1800)
    finally:
        os.unlink(scm)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Tape-speed perturbation (pitch and tempo together)."""
    if abs(factor - 1.0) < 1e-3:
        return x
    return soxr.resample(x, SR, SR / factor).astype(np.float32)


def _tts_job(args):
    vname, jobs = args  # jobs: list of (text, final_path, stretch, f0, speedf)
    engine, v, _, enc = VOICES[vname]
    tmpd = tempfile.mkdtemp(prefix="tts_")
    made = 0
    try:
        todo = [(t, p, st, f0, spd, os.path.join(tmpd, f"{i}.wav"))
                for i, (t, p, st, f0, spd) in enumerate(jobs) if not exists(p)]
        if engine == "festival":
            for i in range(0, len(todo), 60):
                synth_festival_batch(v, enc, [(t, w, st) for t, p, st, f0, spd, w in todo[i:i + 60]])
        for t, p, st, f0, spd, w in todo:
            try:
                if engine == "flite":
                    synth_flite(v, t, w, st, f0)
                x = trim(load_mono16k(w))
            except Exception:
                continue
            x = speed(x, spd)[: int(MAX_S * SR)]
            if len(x) < MIN_S * SR or silent(x):
                continue
            write(p, x)
            made += 1
    finally:
        for f in glob.glob(os.path.join(tmpd, "*")):
            os.unlink(f)
        os.rmdir(tmpd)
    return made


def cmd_tts(out: str, seconds: float, jobs: int, seed: int = 1):
    per_utt = 3.3  # measured mean TTS clip length (s)
    n_total = int(seconds / per_utt)
    names = sorted(VOICES)
    n_per_voice = -(-n_total // len(names))
    pools = {}
    for lang in sorted({VOICES[v][2] for v in names} | {"en"}):
        pools[lang] = sentences(lang, "corpus")
        print(f"  text pool {lang}: {len(pools[lang])} sentences", flush=True)
    work = []
    for vname in names:
        lang = VOICES[vname][2]
        vjobs = []
        for i in range(n_per_voice):
            rng = np.random.default_rng([seed, h(vname) % 2**31, i])
            # non-English voices read native text 70% of the time, English (ASCII) otherwise
            pool = pools[lang] if (lang == "en" or rng.random() < 0.7) else pools["en"]
            text = pool[int(rng.integers(len(pool)))]
            st = float(rng.uniform(0.8, 1.3))
            f0 = float(rng.uniform(80, 220)) if VOICES[vname][0] == "flite" and rng.random() < 0.5 else None
            spd = float(rng.uniform(0.9, 1.1)) if rng.random() < 0.5 else 1.0
            vjobs.append((text, os.path.join(out, "speech_tts", vname, f"{i:05d}.flac"), st, f0, spd))
        for k in range(0, len(vjobs), 120):
            work.append((vname, vjobs[k:k + 120]))
    with ProcessPoolExecutor(jobs) as ex:
        made = sum(ex.map(_tts_job, work))
    print(f"  tts: wrote {made} new files", flush=True)


# --- MIDI / music --------------------------------------------------------------------------------

SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10], "dorian": [0, 2, 3, 5, 7, 9, 10],
    "mixolydian": [0, 2, 4, 5, 7, 9, 10], "pent": [0, 2, 4, 7, 9], "minpent": [0, 3, 5, 7, 10],
    "blues": [0, 3, 5, 6, 7, 10], "harmminor": [0, 2, 3, 5, 7, 8, 11], "whole": [0, 2, 4, 6, 8, 10],
    "chromatic": list(range(12)),
}
DRUM_KITS = [0, 8, 16, 24, 25, 32, 40, 48]


def scale_notes(root: int, scale: str, lo: int, hi: int) -> list[int]:
    iv = SCALES[scale]
    return [n for n in range(lo, hi + 1) if (n - root) % 12 in iv]


def piece_events(rng: np.random.Generator, dur: float, solo: bool = False) -> list[tuple[float, object]]:
    """Random piece of ~dur seconds: list of (time_s, mido.Message). 1-4 tracks and drums in 55 %
    of pieces; `solo`: one track (any melodic program and role), no drums."""
    import mido
    ev = []
    bpm = float(rng.uniform(55, 190))
    beat = 60.0 / bpm
    root = int(rng.integers(12))
    scale = str(rng.choice(list(SCALES), p=None))
    n_tracks = 1 if solo else int(rng.integers(1, 5))
    chans = [c for c in range(16) if c != 9]
    rng.shuffle(chans)
    for ti in range(n_tracks):
        ch = chans[ti]
        prog = int(rng.integers(0, 120))
        role = str(rng.choice(["melody", "chords", "bass", "arp", "pad"]))
        if prog in range(32, 40):
            role = "bass"
        lo = {"bass": 28, "pad": 48, "chords": 45}.get(role, int(rng.integers(48, 72)))
        hi = lo + int(rng.integers(12, 30))
        notes = scale_notes(root, scale, lo, min(hi, 108))
        vol = int(rng.integers(60, 120))
        ev.append((0.0, mido.Message("program_change", channel=ch, program=prog)))
        ev.append((0.0, mido.Message("control_change", channel=ch, control=7, value=vol)))
        ev.append((0.0, mido.Message("control_change", channel=ch, control=10, value=int(rng.integers(20, 108)))))
        t = 0.0 if ti == 0 else float(rng.choice([0.0, beat * 2, beat * 4]))
        prev = int(rng.integers(len(notes)))
        while t < dur:
            if role == "pad":
                length = beat * float(rng.choice([4, 8]))
                ns = [notes[(prev + k) % len(notes)] for k in (0, 2, 4)]
            elif role == "chords":
                length = beat * float(rng.choice([1, 2, 4]))
                ns = [notes[min(len(notes) - 1, (prev + k))] for k in (0, 2, 4)][: int(rng.integers(2, 4))]
            elif role == "arp":
                length = beat * float(rng.choice([0.25, 0.5]))
                ns = [notes[prev]]
            else:
                length = beat * float(rng.choice([0.25, 0.5, 0.5, 1, 1, 1.5, 2]))
                ns = [notes[prev]]
            step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            prev = int(np.clip(prev + step, 0, len(notes) - 1))
            if rng.random() < 0.1 and role == "melody":  # rest
                t += length
                continue
            vel = int(np.clip(rng.normal(85, 18), 25, 127))
            gate = length * float(rng.uniform(0.5, 1.0))
            for n in ns:
                ev.append((t, mido.Message("note_on", channel=ch, note=int(n), velocity=vel)))
                ev.append((min(t + gate, dur), mido.Message("note_off", channel=ch, note=int(n), velocity=0)))
            t += length
    if not solo and rng.random() < 0.55:  # drums on channel 10
        ev.append((0.0, mido.Message("program_change", channel=9, program=int(rng.choice(DRUM_KITS)))))
        pat_len = 16
        kick = rng.random(pat_len) < 0.3
        kick[0] = True
        snare = rng.random(pat_len) < 0.2
        hat = rng.random(pat_len) < 0.6
        extra = int(rng.choice([39, 45, 47, 48, 50, 54, 56, 69, 70, 75, 76, 63, 64]))
        ex = rng.random(pat_len) < 0.15
        step_t = beat / 4
        t, k = 0.0, 0
        while t < dur:
            for on, n in ((kick[k], 36), (snare[k], int(rng.choice([38, 40]))),
                          (hat[k], int(rng.choice([42, 42, 44, 46]))), (ex[k], extra)):
                if on:
                    ev.append((t, mido.Message("note_on", channel=9, note=n, velocity=int(rng.integers(50, 120)))))
                    ev.append((t + 0.05, mido.Message("note_off", channel=9, note=n, velocity=0)))
            t += step_t
            k = (k + 1) % pat_len
    return ev


def events_to_midi(events: list[tuple[float, object]], path: str):
    """Absolute-time (s) events -> type-0 MIDI at 120 bpm / 480 tpb (1 s = 960 ticks)."""
    import mido
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    order = {"program_change": 0, "control_change": 1, "note_off": 2, "note_on": 3}
    events = sorted(events, key=lambda e: (e[0], order.get(e[1].type, 4)))
    last = 0
    for t, m in events:
        tick = int(round(t * 960))
        tr.append(m.copy(time=max(0, tick - last)))
        last = max(last, tick)
    tr.append(mido.MetaMessage("end_of_track", time=960 * 2))
    mid.save(path)


def reset_events(t: float) -> list:
    import mido
    out = []
    for ch in range(16):
        out.append((t, mido.Message("control_change", channel=ch, control=120, value=0)))  # sound off
        out.append((t, mido.Message("control_change", channel=ch, control=121, value=0)))  # reset ctl
        out.append((t, mido.Message("program_change", channel=ch, program=0)))
    return out


def render(events, sf_key: str, total_s: float) -> np.ndarray:
    """Render absolute-time events with fluidsynth at 16 kHz -> mono float32 [samples]."""
    sfp = SOUNDFONTS[sf_key]
    assert os.path.exists(sfp) and not any(b in os.path.realpath(sfp) for b in FORBIDDEN), sfp
    with tempfile.TemporaryDirectory() as d:
        mid, wav = os.path.join(d, "x.mid"), os.path.join(d, "x.wav")
        events_to_midi(events, mid)
        subprocess.run(["fluidsynth", "-ni", "-q", "-F", wav, "-r", str(SR), "-g", "0.7", sfp, mid],
                       check=True, capture_output=True, timeout=3600)
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
    assert sr == SR
    return x.mean(axis=1)


def _music_batch(args):
    out, sub, b, seed, n_pieces, solo = args
    sf_key = "tim" if b % 2 == 0 else "msg"
    paths = [os.path.join(out, sub, f"{sf_key}_{b:04d}_{j:02d}.flac") for j in range(n_pieces)]
    done = os.path.join(out, sub, f".batch_{b:04d}.done")
    if os.path.exists(done):
        return 0
    events, spans, t0 = [], [], 0.5
    for j in range(n_pieces):
        rng = np.random.default_rng([seed, b, j])
        dur = float(rng.uniform(4, 14))
        for t, m in piece_events(rng, dur, solo=solo):
            events.append((t0 + t, m))
        spans.append((t0, dur + 1.0))
        events += reset_events(t0 + dur + 1.2)
        t0 += dur + 2.5
    x = render(events, sf_key, t0)
    made = 0
    for p, (a, d) in zip(paths, spans):
        seg = x[int(a * SR): int((a + d) * SR)][: int(MAX_S * SR)]
        if len(seg) >= MIN_S * SR and not silent(seg) and not exists(p):
            write(p, seg)
            made += 1
    open(done, "w").close()
    return made


def cmd_music(out: str, seconds: float, jobs: int, seed: int = 2, sub: str = "music",
              solo: bool = False):
    n_pieces = 40  # per batch, ~6 minutes of audio
    n_batches = max(1, int(round(seconds / (n_pieces * 9.0))))
    os.makedirs(os.path.join(out, sub), exist_ok=True)
    with ProcessPoolExecutor(jobs) as ex:
        made = sum(ex.map(_music_batch, [(out, sub, b, seed, n_pieces, solo)
                                         for b in range(n_batches)]))
    print(f"  {sub}: {n_batches} batches, wrote {made} new files", flush=True)


def cmd_music_solo(out: str, seconds: float, jobs: int):
    """Solo lines: one instrument, no drums (the seed differs from cmd_music's)."""
    cmd_music(out, seconds, jobs, seed=6, sub="music_solo", solo=True)


# --- real speech and sounds ----------------------------------------------------------------------

def pkg_files(pkg: str, exts=(".ogg", ".oga", ".wav", ".flac", ".gsm")) -> list[str]:
    r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
    return sorted(l for l in r.stdout.split("\n") if l.lower().endswith(exts) and os.path.isfile(l))


TUX_DESC = re.compile(r"^(.*)_desc(?:_([A-Za-z@]+))?\.(ogg|wav)$")


def tux_descs() -> dict[str, list[tuple[str, str]]]:
    """lang -> [(stamp key, path)] of tuxpaint stamp descriptions (real human speech)."""
    out: dict[str, list] = {}
    for p in pkg_files("tuxpaint-stamps-default"):
        m = TUX_DESC.match(p)
        if m:
            stamp = os.path.relpath(m.group(1), "/usr/share/tuxpaint/stamps")
            out.setdefault(m.group(2) or "en", []).append((stamp, p))
    return out


def _real_item(args):
    path, dst, kind, seed = args
    if kind == "concat":  # list of short words -> one clip with pauses
        rng = np.random.default_rng(seed)
        parts = []
        for p in path:
            try:
                w = trim(load_mono16k(p))
            except Exception:
                continue
            if not silent(w):
                parts += [w, np.zeros(int(rng.uniform(0.15, 0.6) * SR), np.float32)]
        x = np.concatenate(parts)[: int(MAX_S * SR)] if parts else np.zeros(0, np.float32)
        if len(x) < MIN_S * SR:
            return []
        if not exists(dst):
            write(dst, x)
        return [len(x) / SR]  # also when it exists: a rerun must count it towards the budget
    try:
        x = trim(load_mono16k(path))
    except Exception:
        return []
    if silent(x) or len(x) < 0.3 * SR:
        return []
    rng = np.random.default_rng(seed)
    segs = chunks(x, rng, max_chunks=6)
    durs = []
    for k, s in enumerate(segs):
        s = pad_to(s, MIN_S)
        p = dst if len(segs) == 1 else dst.replace(".flac", f"_{k}.flac")
        if not exists(p):
            write(p, s)
        durs.append(len(s) / SR)
    return durs


def _run_budget(items, seconds: float, jobs: int, est_s):
    """Process a (deterministically ordered) item list until about `seconds` of audio."""
    total, k = 0.0, 0
    with ProcessPoolExecutor(jobs) as ex:
        while k < len(items) and total < seconds:
            n = max(8, int((seconds - total) / est_s) + 1)
            for durs in ex.map(_real_item, items[k:k + n]):
                total += sum(durs)
            k += n
    return total, min(k, len(items))


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")


def cmd_speech_real(out: str, seconds: float, jobs: int, seed: int = 3):
    items = []
    base = "/usr/share/asterisk/sounds"
    for pkg, lang in (("asterisk-prompt-es-co", "es"), ("asterisk-prompt-fr-armelle", "fr"),
                      ("asterisk-prompt-it-menardi-wav", "it")):
        for p in pkg_files(pkg):
            if bucket(os.path.basename(p), 5) != "corpus":
                continue  # held for make_tasks.py
            items.append((p, os.path.join(out, "speech_real", f"asterisk_{lang}",
                                          safe_name(os.path.relpath(p, base)).rsplit(".", 1)[0] + ".flac"),
                          "file", h(p) % 2**31))
    for lang, lst in sorted(tux_descs().items()):
        for stamp, p in lst:
            if bucket(stamp) == "corpus":  # task stamps never enter the corpus
                items.append((p, os.path.join(out, "speech_real", f"tuxpaint_{lang}",
                                              safe_name(stamp) + ".flac"), "file", h(p) % 2**31))
    kt = {}
    for p in pkg_files("ktuberling-data"):
        if "/sounds/" in p and bucket(os.path.basename(p).lower(), 4) == "corpus":
            kt.setdefault(p.split("/")[-2], []).append(p)
    for lang, lst in sorted(kt.items()):
        rng = np.random.default_rng([seed, h(lang) % 2**31])
        lst = list(lst)
        rng.shuffle(lst)
        for i in range(0, len(lst), 6):
            items.append((lst[i:i + 6], os.path.join(out, "speech_real", f"ktuberling_{safe_name(lang)}",
                                                      f"{i // 6:04d}.flac"), "concat", i))
    items.sort(key=lambda it: h(it[1] + str(seed)))  # stable random order (by output name)
    for it in items:
        if it[2] == "file" and any(b in it[0] for b in FORBIDDEN):
            raise SystemExit(f"forbidden source {it[0]}")
    total, k = _run_budget(items, seconds, jobs, est_s=2.0)
    print(f"  speech_real: used {k}/{len(items)} items, ~{total / 3600:.2f} h", flush=True)


SOUND_PKGS = ["sound-theme-freedesktop", "yaru-theme-sound", "oxygen-sounds", "deepin-sound-theme",
              "heroes-sound-effects", "colobot-common-sounds", "tuxpaint-data",
              "tuxpaint-stamps-default", "alienblaster-data", "chromium-bsu-data", "lomiri-sounds"]


def cmd_sounds(out: str, seconds: float, jobs: int, seed: int = 4):
    items = []
    for pkg in SOUND_PKGS:
        for p in pkg_files(pkg, exts=(".ogg", ".oga", ".wav", ".flac")):
            if TUX_DESC.match(p) or re.search(r"_en_GB\.ogg$", p):
                continue  # spoken descriptions are speech, not sounds
            rel = safe_name(p.replace("/usr/share/", "")).rsplit(".", 1)[0]
            items.append((p, os.path.join(out, "sounds", pkg, rel[-120:] + ".flac"), "file", h(p) % 2**31))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    total, k = _run_budget(items, seconds, jobs, est_s=4.0)
    print(f"  sounds: used {k}/{len(items)} items, ~{total / 3600:.2f} h", flush=True)


# --- packing of short clips ----------------------------------------------------------------------
# Training skips clips under half a crop (~1 s) and pads the others to a crop (~2 s), so the last
# step (`corpus.py pack`) concatenates the short clips of every folder (one voice, language, speaker
# or package) into `<folder>/packed/NNNN.flac` and deletes them; long clips stay as they are.

PACK_SHORT_S = 3.0  # clips shorter than this are packed
PACK_MIN_S = 3.0  # no packed file is shorter, except a folder's only pack ...
PACK_KEEP_S = 2.1  # ... which is kept down to this length and dropped below it
PACK_TARGET_S = (4.0, 10.0)  # each pack grows until it passes a length drawn from this range
PACK_GAP_S = (0.1, 0.4)  # silence between two clips
LEDGER = os.path.join("packed", "MEMBERS.tsv")  # packed file <TAB> its members ("dropped" <TAB> ...)


def read_ledger(d: str) -> list[list[str]]:
    p = os.path.join(d, LEDGER)
    if not os.path.exists(p):
        return []
    with open(p, encoding="utf-8") as f:
        return [l.rstrip("\n").split("\t") for l in f if l.strip() and not l.startswith("#")]


@functools.lru_cache(maxsize=None)
def _packed_names(d: str) -> frozenset:
    """Names in folder d that `pack` consumed (read once per process; pack runs after the builders)."""
    return frozenset(n for row in read_ledger(d) for n in row[1:])


def pack_plan(durs: list[float], gaps: list[float], rng: np.random.Generator) -> list[list[int]]:
    """Split clips 0..n-1 (in packing order) into consecutive packs. A pack grows until it passes a
    target of 4-10 s (so it stays under 13.4 s); a tail under PACK_MIN_S joins the previous pack,
    or, if that would pass MAX_S, the two are re-split at the most even clip boundary. gaps[i] is
    the silence before clip i when it is not first in its pack."""
    def length(m):
        return sum(durs[i] for i in m) + sum(gaps[i] for i in m[1:])
    packs, cur, target = [], [], rng.uniform(*PACK_TARGET_S)
    for i in range(len(durs)):
        cur.append(i)
        if length(cur) >= target:
            packs.append(cur)
            cur, target = [], rng.uniform(*PACK_TARGET_S)
    if cur:
        if packs and length(cur) < PACK_MIN_S:
            both = packs.pop() + cur
            if length(both) <= MAX_S:
                packs.append(both)
            else:
                k = min(range(1, len(both)), key=lambda k: abs(length(both[:k]) - length(both[k:])))
                packs += [both[:k], both[k:]]
        else:
            packs.append(cur)
    return packs


def strip_pad(x: np.ndarray) -> np.ndarray:
    """Drop trailing digital silence (the zero padding that builders add to 1 s)."""
    nz = np.flatnonzero(x)
    return x[: nz[-1] + 1] if len(nz) else x[:0]


def pack_folder(d: str, rel: str, seed: int) -> dict:
    """Pack the short clips lying directly in folder d (see PACK_*). Idempotent: packed members are
    listed in d/packed/MEMBERS.tsv and deleted; a rerun only packs clips that are new since."""
    st = {"short": 0, "short_s": 0.0, "packs": 0, "packed_s": 0.0, "kept": 0, "dropped": 0, "dropped_s": 0.0}
    ledger = read_ledger(d)
    done = {n for row in ledger for n in row[1:]}
    names = sorted(n for n in os.listdir(d) if n.endswith((".flac", ".wav")))
    for n in names:
        if n in done:  # rewritten by an older builder, or left by an interrupted pack
            os.unlink(os.path.join(d, n))
    short = [n for n in names if n not in done and sf.info(os.path.join(d, n)).duration < PACK_SHORT_S]
    if not short:
        return st
    start = sum(row[0] != "dropped" for row in ledger)
    rng = np.random.default_rng([seed, h(rel) % 2**31, start])
    short = [short[i] for i in rng.permutation(len(short))]
    clips = [strip_pad(load_mono16k(os.path.join(d, n))) for n in short]
    gaps = [float(rng.uniform(*PACK_GAP_S)) for _ in clips]
    st["short"], st["short_s"] = len(short), sum(len(c) for c in clips) / SR
    rows = []
    for members in pack_plan([len(c) / SR for c in clips], gaps, rng):
        parts = []
        for i in members:
            if parts:
                parts.append(np.zeros(int(gaps[i] * SR), np.float32))
            parts.append(clips[i])
        x = np.concatenate(parts)
        if len(x) < PACK_MIN_S * SR:  # the folder's only pack: too little short audio
            if len(x) < PACK_KEEP_S * SR:
                rows.append(["dropped"] + [short[i] for i in members])
                st["dropped"] += len(members)
                st["dropped_s"] += len(x) / SR
                continue
            if len(members) == 1:  # one 2.1-3 s clip: leave it where it is, unpacked
                st["kept"] += 1
                continue
        name = os.path.join("packed", f"{start + st['packs']:04d}.flac")
        write(os.path.join(d, name), x)
        rows.append([name] + [short[i] for i in members])
        st["packs"] += 1
        st["packed_s"] += len(x) / SR
    tmp = os.path.join(d, LEDGER + ".part")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# packed file (or 'dropped') <TAB> member clips in order; made by corpus.py pack\n")
        for row in ledger + rows:
            f.write("\t".join(row) + "\n")
    os.replace(tmp, os.path.join(d, LEDGER))
    for row in rows:
        for n in row[1:]:
            os.unlink(os.path.join(d, n))
    return st


def cmd_pack(out: str, seed: int = 5):
    for sub in ("speech_real", "speech_tts", "music", "sounds"):
        tot: dict = {}
        for root, dirs, files in os.walk(os.path.join(out, sub)):
            dirs[:] = sorted(x for x in dirs if x != "packed")
            if any(f.endswith((".flac", ".wav")) for f in files):
                st = pack_folder(root, os.path.relpath(root, out), seed)
                for k, v in st.items():
                    tot[k] = tot.get(k, 0) + v
        if tot.get("short"):
            print(f"  pack {sub}: {tot['short']} clips < {PACK_SHORT_S:g} s ({tot['short_s'] / 3600:.2f} h) -> "
                  f"{tot['packs']} packed files ({tot['packed_s'] / 3600:.2f} h); {tot['kept']} kept as is "
                  f"(2.1-3 s, alone in their folder), {tot['dropped']} dropped ({tot['dropped_s']:.1f} s)",
                  flush=True)


def cmd_summary(out: str):
    rows, gt_n, gt_s = [], 0, 0.0
    optional = [d for d in ("music_solo",) if os.path.isdir(os.path.join(out, d))]
    for sub in ("speech_real", "speech_tts", "music", *optional, "sounds"):
        n, s, bad, u2, u3 = 0, 0.0, 0, 0, 0
        for p in glob.glob(os.path.join(out, sub, "**", "*.*"), recursive=True):
            if p.endswith((".flac", ".wav")):
                info = sf.info(p)
                n += 1
                s += info.duration
                bad += info.samplerate != SR or info.channels != 1
                u2 += info.duration < 2.01
                u3 += info.duration < PACK_MIN_S
        rows.append(f"{sub}: {n} files, {s / 3600:.2f} h, {u2} under 2.01 s, {u3} under 3 s"
                    + (f" ({bad} not 16k mono!)" if bad else ""))
        gt_n += n
        gt_s += s
    rows.append(f"TOTAL: {gt_n} files, {gt_s / 3600:.2f} h")
    print("\n".join(rows))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["speech_real", "sounds", "tts", "music", "music_solo", "pack",
                                    "summary"])
    ap.add_argument("out")
    ap.add_argument("seconds", nargs="?", type=float, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "summary":
        cmd_summary(a.out)
    elif a.cmd == "pack":
        cmd_pack(a.out)
    else:
        {"speech_real": cmd_speech_real, "sounds": cmd_sounds, "tts": cmd_tts,
         "music": cmd_music, "music_solo": cmd_music_solo}[a.cmd](a.out, a.seconds, a.jobs)


if __name__ == "__main__":
    main()
