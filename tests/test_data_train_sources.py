"""The training program runs two steps on every data source.

`wavjepa_jax.train.run` trains on configs/tiny.py with each source in turn, all in one fresh
subprocess that has a persistent XLA compilation cache, so only the first run pays for compiling
the step (a pytest process may already have compiled with the cache off, which JAX then keeps).
A JAX_COMPILATION_CACHE_DIR set in the environment is used, so CI can keep the cache warm.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from wavjepa_jax.data import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("procedural", "folder", "manifest", "arrayrecord", "tfds")
DRIVER = """
import importlib.util, json, sys
from wavjepa_jax import train
spec = importlib.util.spec_from_file_location("tiny", "configs/tiny.py")
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
for source, overrides, workdir in json.loads(sys.argv[1]):
    config = tiny.get_config()
    config.total_steps = 2
    config.data.source = source
    config.data.update(overrides)
    metrics = train.run(config, workdir)
    print("RESULT", json.dumps(dict(source=source, **metrics)), flush=True)
"""


class WavjepaTrainTones(tfds.core.GeneratorBasedBuilder):
    """Two 3 s 16 kHz float tones under the default feature name "audio"."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=16_000)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, frequency in enumerate((440.0, 880.0)):
            yield index, {"audio": tone(frequency).astype(np.float32)}


def tone(frequency, rate=16_000, seconds=3.0):
    """Longer than a 2.01 s crop: shorter clips are padded, and under half a crop skipped."""
    return 0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory):
    """source -> config.data overrides: a folder, a manifest, shards and a TFDS dataset."""
    root = tmp_path_factory.mktemp("train_data")
    folder = root / "audio"
    folder.mkdir()
    for index, frequency in enumerate((300.0, 500.0, 700.0)):
        soundfile.write(str(folder / f"tone_{index}.flac"), tone(frequency, 22_050), 22_050)
    (folder / "corrupt.wav").write_bytes(b"RIFF" + bytes(60))
    (root / "list.txt").write_text("\n".join(f"audio/tone_{index}.flac" for index in range(3)))
    prepare.prepare(sorted(str(path) for path in folder.iterdir()), str(root / "shards"),
                    num_shards=2, workers=1, sample_rate=16_000, progress=False)
    WavjepaTrainTones(data_dir=str(root / "tfds"), file_format="array_record"
                      ).download_and_prepare()
    return {
        "procedural": {},
        "folder": {"path": str(folder)},
        "manifest": {"path": str(root / "list.txt")},
        "arrayrecord": {"path": str(root / "shards")},
        "tfds": {"path": "wavjepa_train_tones", "tfds_data_dir": str(root / "tfds")},
    }


@pytest.mark.slow
def test_training_runs_two_steps_on_every_source(data_paths, tmp_path):
    runs = [(source, data_paths[source], str(tmp_path / source)) for source in SOURCES]
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path / "xla_cache")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert [run["source"] for run in results] == list(SOURCES)
    for run in results:
        assert np.isfinite(run["loss"]), run
        assert run["skipped_files"] <= 2, run  # Only the folder's corrupt file can be skipped.
