#!/usr/bin/env python
"""Small labelled probe tasks in the folder format `python -m wavjepa_jax.probe --data` reads:

    OUT/<task>/{train,test}/<class>/<clip>.wav      (16 kHz mono PCM16, ~1-3 s)

    python benchmarks/learning/make_tasks.py OUT [--only speaker,pitch] [--jobs 2]

Tasks (deterministic, seeded; a task folder with a .done marker is skipped on re-runs):
  speech_language  5 languages (ca da es fr ru) of REAL speech: half tuxpaint stamp descriptions
                   (split by stamp), half ktuberling spoken words / asterisk es-co prompts (split
                   by word / file); every clip through a random channel (make_tasks.channel)
  speaker          10 TTS voices (flite + festival) reading English sentences; train and test
                   sentences are disjoint (and disjoint from the corpus text); random channel, ±8 % speed
  spoken_digit     English digit words zero..nine; 11 voices in train, 5 unseen voices in test
  pitch            12 pitch classes of single notes (fluidsynth, 2 soundfonts, MIDI 36-83);
                   train and test use DISJOINT sets of General MIDI programs
  instrument       8 GM families (piano, chrom. percussion, organ, guitar, bass, strings, brass,
                   reed/pipe) of short random phrases; different random draws in train and test
Loudness is normalised per clip (-24 dBFS RMS) so level is not a cue. Held-out-data rule: README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus as C  # noqa: E402

SR = C.SR


def level(x: np.ndarray, rms_db: float = -24.0) -> np.ndarray:
    r = float(np.sqrt(np.mean(x ** 2)))
    return C.fix_peak(x * (10 ** (rms_db / 20) / max(r, 1e-6)))


def clip_speech(x: np.ndarray, max_s: float = 3.0) -> np.ndarray | None:
    x = C.trim(x)
    if len(x) < 0.5 * SR or C.silent(x):
        return None
    return level(C.pad_to(x[: int(max_s * SR)], 1.0))


def save(root, task, split, cls, name, x):
    C.write(os.path.join(root, task, split, cls, name + ".wav"), x)


# --- channel perturbation ------------------------------------------------------------------------

def channel(x: np.ndarray, rng: np.random.Generator, speed_range: float = 0.0) -> np.ndarray:
    """Random recording channel: speed (optional), band limit, high-pass, two EQ bands, noise.
    Applied independently to every train and test clip so channel/level are no shortcut."""
    from scipy.signal import butter, sosfilt
    if speed_range:
        x = C.speed(x, float(rng.uniform(1 - speed_range, 1 + speed_range)))
    lp = rng.choice([3400.0, 4000.0, 5500.0, 7000.0, 0.0])
    if lp:
        x = sosfilt(butter(6, lp, "low", fs=SR, output="sos"), x)
    x = sosfilt(butter(2, float(rng.uniform(60, 300)), "high", fs=SR, output="sos"), x)
    for _ in range(2):
        f0 = float(np.exp(rng.uniform(np.log(200), np.log(4000))))
        g = 10 ** (float(rng.uniform(-9, 9)) / 20) - 1
        x = x + g * sosfilt(butter(2, [f0 / 1.5, f0 * 1.5], "band", fs=SR, output="sos"), x)
    noise = rng.standard_normal(len(x))
    if rng.random() < 0.5:  # pink-ish
        noise = sosfilt(butter(1, 500.0, "low", fs=SR, output="sos"), noise)
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)) + 1e-9)
    x = x + noise * rms(x) / rms(noise) * 10 ** (-float(rng.uniform(15, 35)) / 20)
    return x.astype(np.float32)


# --- speech_language -----------------------------------------------------------------------------

LANGS = {"ca": "ktuberling", "da": "ktuberling", "es": "asterisk-prompt-es-co",
         "fr": "ktuberling", "ru": "ktuberling"}


def _second_source(lang: str, split: str, n: int, rng) -> list[np.ndarray]:
    """n clips of `lang` from its second real-speech source (another speaker and recording)."""
    out = []
    if LANGS[lang] == "ktuberling":  # 2-4 spoken words, words split by name (bucket k=4)
        words = [p for p in C.pkg_files("ktuberling-data") if p.split("/")[-2] == lang
                 and C.bucket(os.path.basename(p).lower(), 4) == "task_" + split]
        wav = [w for w in (C.trim(C.load_mono16k(p)) for p in sorted(words)) if not C.silent(w)]
        for _ in range(n * 3):
            if len(out) >= n:
                break
            parts = []
            for i in rng.choice(len(wav), int(rng.integers(2, 5)), replace=False):
                parts += [wav[i], np.zeros(int(rng.uniform(0.1, 0.35) * SR), np.float32)]
            x = np.concatenate(parts)[: 3 * SR]
            if len(x) >= 1.0 * SR:
                out.append(x)
    else:  # asterisk prompts, split by file (bucket k=5)
        files = [p for p in C.pkg_files(LANGS[lang]) if C.bucket(os.path.basename(p), 5) == "task_" + split]
        rng.shuffle(files)
        for p in files:
            if len(out) >= n:
                break
            x = C.trim(C.load_mono16k(p))
            if len(x) >= 0.5 * SR and not C.silent(x):
                out.append(x[: 3 * SR])
    return out


def task_speech_language(root, n_train=46, n_test=18, seed=11):
    """Half the clips of each language from tuxpaint stamp descriptions (split by stamp), half
    from a second source (ktuberling words or asterisk prompts), all through random channels."""
    descs = C.tux_descs()
    info = {}
    for lang in LANGS:
        rng = np.random.default_rng([seed, C.h(lang) % 2**31])
        for split, n in (("train", n_train), ("test", n_test)):
            n2 = n // 2
            cand = [(s, p) for s, p in descs[lang] if C.bucket(s) == "task_" + split]
            rng.shuffle(cand)
            clips = []
            for stamp, p in cand:
                if len(clips) >= n - n2:
                    break
                x = C.trim(C.load_mono16k(p))
                if len(x) >= 0.5 * SR and not C.silent(x):
                    clips.append(("tux_" + C.safe_name(stamp), x[: 3 * SR]))
            second = _second_source(lang, split, n2, rng)
            clips += [(f"{LANGS[lang].split('-')[0]}_{i:03d}", x) for i, x in enumerate(second)]
            for name, x in clips:
                save(root, "speech_language", split, lang, name, level(C.pad_to(channel(x, rng), 1.0)))
            info[f"{lang}/{split}"] = {"tuxpaint": len(clips) - len(second), LANGS[lang]: len(second)}
    return info


# --- TTS tasks -----------------------------------------------------------------------------------

def tts_clips(vname: str, items: list[tuple[str, float]]) -> list[np.ndarray | None]:
    """items: (text, duration_stretch) -> trimmed 16 kHz mono arrays (None on failure)."""
    engine, v, _, enc = C.VOICES[vname]
    d = tempfile.mkdtemp(prefix="task_tts_")
    wavs = [os.path.join(d, f"{i}.wav") for i in range(len(items))]
    try:
        if engine == "festival":
            C.synth_festival_batch(v, enc, [(t, w, st) for (t, st), w in zip(items, wavs)])
        out = []
        for (t, st), w in zip(items, wavs):
            try:
                if engine == "flite":
                    C.synth_flite(v, t, w, st)
                out.append(C.load_mono16k(w))
            except Exception:
                out.append(None)
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)


SPEAKERS = ["flite_awb", "flite_rms", "flite_slt", "flite_kal16", "fest_ked", "fest_it_lp",
            "fest_it_pc", "fest_cs_machac", "fest_cs_dita", "fest_ca_ona"]


def _speaker_job(args):
    root, vname, n_train, n_test, seed = args
    done = {}
    for split, n in (("train", n_train), ("test", n_test)):
        pool = C.sentences("en", "task_" + split, min_w=4, max_w=9)
        rng = np.random.default_rng([seed, C.h(vname + split) % 2**31])
        idx = rng.permutation(len(pool))[: n * 2]
        items = [(C.encode_for(pool[i], None), float(rng.uniform(0.9, 1.1))) for i in idx]
        k = 0
        for j, x in enumerate(tts_clips(vname, items)):
            if k >= n or x is None:
                continue
            x = clip_speech(x, max_s=2.0)
            if x is None:
                continue
            x = level(channel(x, rng, speed_range=0.08))
            save(root, "speaker", split, vname, f"{split}_{j:03d}", x)
            k += 1
        done[f"{vname}/{split}"] = k
    return done


def task_speaker(root, jobs, n_train=40, n_test=16, seed=12):
    info = {}
    with ProcessPoolExecutor(jobs) as ex:
        for d in ex.map(_speaker_job, [(root, v, n_train, n_test, seed) for v in SPEAKERS]):
            info.update(d)
    return info


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TRAIN = ["flite_kal", "flite_kal16", "flite_awb", "flite_slt", "fest_kal", "fest_slt_hts",
               "fest_it_lp", "fest_cs_krb", "fest_cs_machac", "fest_fi_mv", "fest_ca_ona"]
DIGIT_TEST = ["flite_rms", "fest_ked", "fest_it_pc", "fest_cs_dita", "fest_fi_lj"]


def _digit_job(args):
    root, vname, split, n_var, seed = args
    rng = np.random.default_rng([seed, C.h(vname) % 2**31])
    plan = [(d, float(rng.uniform(0.8, 1.3)), float(rng.uniform(0.9, 1.12)))
            for d in range(10) for _ in range(n_var)]
    clips = tts_clips(vname, [(DIGITS[d], st) for d, st, _ in plan])
    k = 0
    for j, ((d, st, spd), x) in enumerate(zip(plan, clips)):
        if x is None:
            continue
        x = C.speed(C.trim(x), spd)
        if len(x) < 0.2 * SR or C.silent(x):
            continue
        x = level(C.pad_to(x[: 2 * SR], 1.0))
        save(root, "spoken_digit", split, DIGITS[d], f"{vname}_{j:02d}", x)
        k += 1
    return {f"{vname}/{split}": k}


def task_spoken_digit(root, jobs, seed=13):
    info = {}
    work = [(root, v, "train", 4, seed) for v in DIGIT_TRAIN] + [(root, v, "test", 3, seed) for v in DIGIT_TEST]
    with ProcessPoolExecutor(jobs) as ex:
        for d in ex.map(_digit_job, work):
            info.update(d)
    return info


# --- music tasks ---------------------------------------------------------------------------------

def render_clips(specs, clip_s: float, gap_s: float):
    """specs: list of (sf_key, events relative to clip start) -> list of clip arrays (same order)."""
    out = [None] * len(specs)
    for sfk in sorted({s[0] for s in specs}):
        idx = [i for i, s in enumerate(specs) if s[0] == sfk]
        events, t0, starts = [], 0.5, []
        for i in idx:
            events += C.reset_events(t0 - 0.3)
            events += [(t0 + t, m) for t, m in specs[i][1]]
            starts.append(t0)
            t0 += clip_s + gap_s
        x = C.render(events, sfk, t0)
        for i, a in zip(idx, starts):
            out[i] = x[int(a * SR): int((a + clip_s) * SR)]
    return out


PITCH_PROGRAMS = [p for p in list(range(0, 96)) + list(range(104, 112)) if p not in (55, 47)]
PITCHES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def task_pitch(root, n_train=35, n_test=15, seed=14):
    import mido
    rng = np.random.default_rng(seed)
    progs = list(rng.permutation(PITCH_PROGRAMS))
    split_progs = {"train": sorted(progs[: len(progs) // 2]), "test": sorted(progs[len(progs) // 2:])}
    info = {"programs": {k: [int(p) for p in v] for k, v in split_progs.items()}}
    for split, n in (("train", n_train), ("test", n_test)):
        specs, labels = [], []
        for pc in range(12):
            for _ in range(n):
                prog = int(rng.choice(split_progs[split]))
                lo = 36 if prog in range(32, 40) else 48
                note = int(12 * rng.integers(lo // 12, lo // 12 + 3) + pc)
                vel = int(rng.integers(60, 121))
                ev = [(0.0, mido.Message("program_change", channel=0, program=prog)),
                      (0.05, mido.Message("note_on", channel=0, note=note, velocity=vel)),
                      (1.05, mido.Message("note_off", channel=0, note=note, velocity=0))]
                specs.append((str(rng.choice(["tim", "msg"])), ev))
                labels.append((pc, prog, note))
        clips = render_clips(specs, clip_s=1.5, gap_s=1.5)
        cnt = {}
        for j, (x, (pc, prog, note)) in enumerate(zip(clips, labels)):
            if C.silent(x):
                continue
            save(root, "pitch", split, f"{pc:02d}_{PITCHES[pc].replace('#', 's')}",
                 f"{j:04d}_p{prog}_n{note}_{specs[j][0]}", level(x))
            cnt[pc] = cnt.get(pc, 0) + 1
        info[split] = cnt
    return info


FAMILIES = {"piano": range(0, 8), "chromatic_perc": range(8, 16), "organ": range(16, 24),
            "guitar": range(24, 32), "bass": range(32, 40), "strings": range(40, 48),
            "brass": range(56, 64), "reed_pipe": range(64, 80)}


def task_instrument(root, n_train=45, n_test=18, seed=15):
    import mido
    info = {}
    for split, n, sd in (("train", n_train, seed), ("test", n_test, seed + 1000)):
        rng = np.random.default_rng(sd)
        specs, labels = [], []
        for fam, progs in FAMILIES.items():
            for _ in range(n):
                prog = int(rng.choice(list(progs)))
                lo = int(rng.integers(28, 44)) if fam == "bass" else int(rng.integers(45, 72))
                notes = C.scale_notes(int(rng.integers(12)), str(rng.choice(["major", "minor", "pent", "dorian"])), lo, lo + 14)
                step = float(rng.uniform(0.18, 0.45))
                t, ev, prev = 0.05, [(0.0, mido.Message("program_change", channel=0, program=prog))], int(rng.integers(len(notes)))
                vel = int(rng.integers(60, 121))
                while t < 2.2:
                    nt = notes[prev]
                    gate = step * float(rng.uniform(0.6, 1.0))
                    ev += [(t, mido.Message("note_on", channel=0, note=nt, velocity=vel)),
                           (min(t + gate, 2.3), mido.Message("note_off", channel=0, note=nt, velocity=0))]
                    t += step * float(rng.choice([1, 1, 2]))
                    prev = int(np.clip(prev + rng.integers(-2, 3), 0, len(notes) - 1))
                specs.append((str(rng.choice(["tim", "msg"])), ev))
                labels.append((fam, prog))
        clips = render_clips(specs, clip_s=2.5, gap_s=1.5)
        cnt = {}
        for j, (x, (fam, prog)) in enumerate(zip(clips, labels)):
            if C.silent(x):
                continue
            save(root, "instrument", split, fam, f"{j:04d}_p{prog}_{specs[j][0]}", level(x))
            cnt[fam] = cnt.get(fam, 0) + 1
        info[split] = cnt
    return info


TASKS = ["speech_language", "speaker", "spoken_digit", "pitch", "instrument"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", default=",".join(TASKS))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    for task in a.only.split(","):
        d = os.path.join(a.out, task)
        if os.path.exists(os.path.join(d, ".done")):
            print(f"{task}: exists, skipped")
            continue
        shutil.rmtree(d, ignore_errors=True)  # partial builds are redone from scratch
        fn = globals()["task_" + task]
        info = fn(a.out, a.jobs) if task in ("speaker", "spoken_digit") else fn(a.out)
        counts = {s: sum(len(files) for _, _, files in os.walk(os.path.join(d, s))) for s in ("train", "test")}
        classes = sorted(os.listdir(os.path.join(d, "train")))
        json.dump({"classes": classes, "counts": counts, "detail": info}, open(os.path.join(d, "info.json"), "w"),
                  indent=1, default=str)
        open(os.path.join(d, ".done"), "w").close()
        print(f"{task}: {len(classes)} classes {classes}; train {counts['train']} / test {counts['test']} clips", flush=True)


if __name__ == "__main__":
    main()
