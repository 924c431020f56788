"""Precompute a bank of simulated room impulse responses for the scene transform.

    python -m wavjepa_jax.data.rooms --output /data/rooms --rooms 200 --responses 8
    python -m wavjepa_jax.train ... --config.data.scene.rir_path=/data/rooms

Each room is a shoebox simulated with pyroomacoustics' image-source method (`pip install
'wavjepa_jax[rooms]'`): its size, its reverberation time (RT60, turned into a wall absorption by
Sabine's formula) and a listener position are drawn; the listener is two omnidirectional
receivers EAR_DISTANCE apart on a horizontal line of drawn orientation (no head shadow: the ears
differ in arrival time and level by distance only), or one receiver with `--channels 1`.
`--responses` sources at drawn positions around the listener give one response each, so the
scene transform can put a clip and its noise at different places in the same room.

Written as OUTPUT/room_<i>/source_<j>.npy ([channels, taps] float32 at --sample-rate, each room's
responses scaled together so their largest tap is 1) and OUTPUT/rooms.json (every room's drawn
geometry and RT60), the layout `scenes.RoomBank.from_folder` reads. Each room is drawn from its
own seed (`--seed` and its index), so a bank is the same whatever `--workers` is, and a rerun
keeps the rooms whose files exist.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os

import numpy as np

from wavjepa_jax import cli
from wavjepa_jax.data.scenes import EAR_DISTANCE

MIN_WALL_GAP = 0.5   # m: receivers and sources stay this far from every wall


@dataclasses.dataclass(frozen=True)
class RoomSpec:
    """What is drawn for one room: enough to simulate it again."""

    size: tuple[float, float, float]          # m
    rt60: float                               # s
    receivers: tuple[tuple[float, ...], ...]  # [channels] x (x, y, z)
    sources: tuple[tuple[float, ...], ...]    # [responses] x (x, y, z)


def draw_room(rng: np.random.Generator, responses: int, channels: int,
              rt60_range: tuple[float, float], size_range: tuple[float, float],
              height_range: tuple[float, float]) -> RoomSpec:
    """A room size, an RT60, a listener (1 or 2 receivers at ear height) and source positions,
    every point at least MIN_WALL_GAP from the walls."""
    size = np.array([rng.uniform(*size_range), rng.uniform(*size_range),
                     rng.uniform(*height_range)])
    low, high = np.full(3, MIN_WALL_GAP), size - MIN_WALL_GAP
    half_ears = np.array([0.5 * EAR_DISTANCE, 0.5 * EAR_DISTANCE, 0.0])
    centre = rng.uniform(low + half_ears, high - half_ears)   # both ears inside the gap
    centre[2] = min(max(rng.uniform(1.2, 1.8), low[2]), high[2])   # ear height, if it fits
    angle = rng.uniform(0.0, np.pi)
    offset = 0.5 * EAR_DISTANCE * np.array([np.cos(angle), np.sin(angle), 0.0])
    receivers = [centre - offset, centre + offset] if channels == 2 else [centre]
    sources = [rng.uniform(low, high) for _ in range(responses)]
    as_tuple = lambda p: tuple(round(float(v), 4) for v in p)  # noqa: E731
    return RoomSpec(as_tuple(size), round(float(rng.uniform(*rt60_range)), 4),
                    tuple(as_tuple(p) for p in receivers), tuple(as_tuple(p) for p in sources))


def import_pyroomacoustics():
    try:
        import pyroomacoustics  # noqa: PLC0415 - an optional dependency, only this tool needs it.
    except ImportError as error:
        raise ImportError("simulating rooms needs pyroomacoustics: pip install "
                          "'wavjepa_jax[rooms]' (or give data.scene.rir_path a folder of "
                          "measured responses)") from error
    return pyroomacoustics


def simulate(spec: RoomSpec, sample_rate: int, max_order: int) -> list[np.ndarray]:
    """The room's responses, one [channels, taps] array per source, all of one length and
    scaled together so the largest tap of the room is 1."""
    pra = import_pyroomacoustics()
    absorption, sabine_order = pra.inverse_sabine(spec.rt60, list(spec.size))
    room = pra.ShoeBox(list(spec.size), fs=sample_rate, materials=pra.Material(absorption),
                       max_order=min(sabine_order, max_order), air_absorption=True)
    room.add_microphone_array(np.array(spec.receivers, dtype=np.float64).T)
    for source in spec.sources:
        room.add_source(list(source))
    room.compute_rir()
    taps = max(len(rir) for per_mic in room.rir for rir in per_mic)
    out = np.zeros((len(spec.sources), len(spec.receivers), taps), np.float32)
    for mic, per_mic in enumerate(room.rir):
        for source, rir in enumerate(per_mic):
            out[source, mic, :len(rir)] = rir
    peak = float(np.max(np.abs(out)))
    if not np.isfinite(peak) or peak == 0.0:
        raise ValueError(f"room {spec}: the simulation gave no response")
    return list(out / peak)


def room_seed(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def make_room(output: str, index: int, args: argparse.Namespace) -> dict:
    """Draw, simulate and write room `index` (kept as it is if its files exist)."""
    spec = draw_room(room_seed(args.seed, index), args.responses, args.channels,
                     args.rt60, args.size, args.height)
    folder = os.path.join(output, f"room_{index:05d}")
    paths = [os.path.join(folder, f"source_{j:02d}.npy") for j in range(args.responses)]
    if not all(os.path.exists(p) for p in paths):
        os.makedirs(folder, exist_ok=True)
        for path, response in zip(paths, simulate(spec, args.sample_rate, args.max_order)):
            np.save(path + ".partial.npy", response)
            os.replace(path + ".partial.npy", path)
    return {"room": os.path.basename(folder), **dataclasses.asdict(spec)}


def make_bank(args: argparse.Namespace) -> list[dict]:
    os.makedirs(args.output, exist_ok=True)
    jobs = ([args.output] * args.rooms, range(args.rooms), [args] * args.rooms)
    if args.workers == 1:
        rooms = list(map(make_room, *jobs))
    else:  # "spawn": forking a process that runs JAX threads can deadlock.
        with concurrent.futures.ProcessPoolExecutor(
                args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rooms = list(pool.map(make_room, *jobs))
    with open(os.path.join(args.output, "rooms.json"), "w") as f:
        json.dump({"sample_rate": args.sample_rate, "channels": args.channels,
                   "seed": args.seed, "rooms": rooms}, f, indent=1)
    return rooms


def value_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW <= HIGH")
    return bounds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m wavjepa_jax.data.rooms",
        description="Simulate a bank of room impulse responses (shoebox rooms, image-source "
                    "method) for --config.data.scene.rir_path.")
    parser.add_argument("--output", required=True, help="folder for OUTPUT/room_<i>/*.npy")
    parser.add_argument("--rooms", type=int, default=100, help="number of rooms (default 100)")
    parser.add_argument("--responses", type=int, default=8,
                        help="source positions (responses) per room (default 8)")
    parser.add_argument("--channels", type=int, default=2, choices=(1, 2),
                        help="2: two receivers an ear-distance apart (default); 1: one")
    parser.add_argument("--rt60", type=value_range, default=(0.2, 0.9),
                        help="reverberation time range, s (default 0.2,0.9)")
    parser.add_argument("--size", type=value_range, default=(3.0, 10.0),
                        help="floor side range, m (default 3,10)")
    parser.add_argument("--height", type=value_range, default=(2.4, 4.0),
                        help="ceiling height range, m (default 2.4,4)")
    parser.add_argument("--max-order", type=int, default=60,
                        help="cap on the image-source order (the Sabine order for the RT60 "
                             "when lower; default 60)")
    parser.add_argument("--sample-rate", type=int, default=16_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="simulation processes (default: all cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    with cli.reported_errors(args.debug):
        for name in ("rooms", "responses", "max_order", "sample_rate", "workers"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be "
                                 "positive")
        if args.size[0] <= 2 * MIN_WALL_GAP or args.height[0] <= 2 * MIN_WALL_GAP:
            raise ValueError(f"--size and --height must exceed {2 * MIN_WALL_GAP} m (sources "
                             f"and receivers stay {MIN_WALL_GAP} m from the walls)")
        import_pyroomacoustics()
        rooms = make_bank(args)
        print(f"Wrote {len(rooms)} rooms x {args.responses} responses ({args.channels} channels, "
              f"{args.sample_rate} Hz) to {args.output}")
        return rooms


if __name__ == "__main__":
    main()
