"""The simulated room bank (wavjepa_jax.data.rooms): geometry, acoustics, layout, seeds, errors."""

import json
import os

import numpy as np
import pytest

from wavjepa_jax.data import rooms, scenes

RATE = 16_000
# Small, fairly dry rooms keep the image-source simulation to a fraction of a second each.
SMALL = ["--size", "3,4", "--height", "2.5,3", "--rt60", "0.25,0.35", "--max-order", "30",
         "--sample-rate", str(RATE)]


def make_bank(tmp_path, name="bank", rooms_count=2, responses=3, workers=1, extra=()):
    out = str(tmp_path / name)
    specs = rooms.main(["--output", out, "--rooms", str(rooms_count), "--responses",
                        str(responses), "--workers", str(workers), *SMALL, *extra])
    return out, specs


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_bank(tmp_path_factory.mktemp("rooms"))


def test_layout_is_what_the_scene_transform_reads(bank):
    out, specs = bank
    assert sorted(os.listdir(out)) == ["room_00000", "room_00001", "rooms.json"]
    loaded = scenes.RoomBank.from_folder(out, RATE, channels=2)
    assert len(loaded.rooms) == 2 and not loaded.skipped
    for responses in loaded.rooms:
        assert len(responses) == 3
        assert {r.shape for r in responses} == {responses[0].shape}
        assert responses[0].shape[0] == 2
        assert max(float(np.max(np.abs(r))) for r in responses) == pytest.approx(1.0)
    recorded = json.load(open(os.path.join(out, "rooms.json")))
    assert recorded["rooms"] == json.loads(json.dumps(specs))
    assert recorded["channels"] == 2 and recorded["sample_rate"] == RATE


def test_drawn_geometry_stays_inside_the_room(bank):
    _, specs = bank
    for spec in specs:
        size = np.array(spec["size"])
        assert 3.0 <= size[0] <= 4.0 and 3.0 <= size[1] <= 4.0 and 2.5 <= size[2] <= 3.0
        assert 0.25 <= spec["rt60"] <= 0.35
        points = np.array(spec["receivers"] + spec["sources"])
        assert np.all(points >= rooms.MIN_WALL_GAP - 1e-3)
        assert np.all(points <= size - rooms.MIN_WALL_GAP + 1e-3)
        left, right = np.array(spec["receivers"])
        assert np.linalg.norm(left - right) == pytest.approx(scenes.EAR_DISTANCE, abs=1e-3)


def direct_path_peak(response):
    """The tap of the first arrival: the largest tap within 6 of the first one above a quarter
    of the response's maximum (a reflection can peak higher than the direct sound, whose energy
    the fractional-delay filter spreads over neighbouring taps, but never 4 times higher)."""
    magnitude = np.abs(response)
    onset = int(np.argmax(magnitude >= 0.25 * magnitude.max()))
    return onset + int(np.argmax(magnitude[onset:onset + 7]))


def test_ears_hear_the_direct_path_at_the_geometric_delays(bank):
    """The interaural delay of each response's direct sound matches the source-ear distances."""
    out, specs = bank
    for spec in specs:
        left, right = np.array(spec["receivers"])
        for j, source in enumerate(np.array(spec["sources"])):
            response = np.load(os.path.join(out, spec["room"], f"source_{j:02d}.npy"))
            peaks = [direct_path_peak(channel) for channel in response]
            expected = (np.linalg.norm(source - left) - np.linalg.norm(source - right)) \
                / scenes.SPEED_OF_SOUND * RATE
            assert peaks[0] - peaks[1] == pytest.approx(expected, abs=1.5)
            # The nearer ear hears the direct sound louder (energy within 10 taps of its peak:
            # the fractional-delay filter spreads one arrival over a few taps).
            energy = [np.sum(np.square(response[c, max(p - 10, 0):p + 11])) for c, p in
                      enumerate(peaks)]
            near, far = sorted([np.linalg.norm(source - left), np.linalg.norm(source - right)])
            nearer = 0 if np.linalg.norm(source - left) <= np.linalg.norm(source - right) else 1
            assert energy[nearer] / energy[1 - nearer] == pytest.approx((far / near) ** 2,
                                                                        rel=0.1)


def test_reverberation_time_follows_the_drawn_rt60(bank):
    out, specs = bank
    for spec in specs:
        response = np.load(os.path.join(out, spec["room"], "source_00.npy"))[0]
        # Schroeder's backward integral; the time from -5 dB to -25 dB, times 3 (T20).
        energy = np.cumsum(np.square(response[::-1].astype(np.float64)))[::-1]
        decay_db = 10 * np.log10(np.maximum(energy / energy[0], 1e-12))
        t5, t25 = np.argmax(decay_db <= -5), np.argmax(decay_db <= -25)
        measured = 3 * (t25 - t5) / RATE
        assert measured == pytest.approx(spec["rt60"], rel=0.35)


def test_same_seed_same_bank_whatever_the_workers(tmp_path, bank):
    out, specs = bank
    again, specs_again = make_bank(tmp_path, "again", workers=2)
    _, specs_other = make_bank(tmp_path, "other", extra=("--seed", "1"))
    assert specs_again == specs and specs_other != specs
    for j in range(3):
        name = os.path.join("room_00001", f"source_{j:02d}.npy")
        np.testing.assert_array_equal(np.load(os.path.join(out, name)),
                                      np.load(os.path.join(again, name)))


def test_a_rerun_keeps_the_rooms_it_has(tmp_path):
    out, _ = make_bank(tmp_path, rooms_count=1, responses=2)
    path = os.path.join(out, "room_00000", "source_00.npy")
    os.utime(path, (1, 1))
    make_bank(tmp_path, rooms_count=2, responses=2)
    assert os.stat(path).st_mtime == 1
    assert sorted(os.listdir(os.path.join(out, "room_00001"))) == ["source_00.npy",
                                                                    "source_01.npy"]


def test_mono_bank(tmp_path):
    out, specs = make_bank(tmp_path, rooms_count=1, responses=2, extra=("--channels", "1"))
    assert len(specs[0]["receivers"]) == 1
    assert scenes.RoomBank.from_folder(out, RATE, channels=1).channels == 1


@pytest.mark.parametrize("flags, message", [
    (["--rooms", "0"], "--rooms=0 must be positive"),
    (["--rt60", "0.5,0.2"], "need 0 < LOW <= HIGH"),
    (["--size", "0.8,2"], "--size and --height must exceed 1.0 m"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        rooms.main(["--output", str(tmp_path / "x"), *flags])
    assert exit_info.value.code in (1, 2)
    assert message in capsys.readouterr().err
