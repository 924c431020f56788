"""The `tfds` source on a real (tiny) TFDS dataset prepared in the array_record file format."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from wavjepa_jax import configuration
from wavjepa_jax.data import make_train_iterator

TONES = (500.0, 900.0, 1300.0, 1700.0)


class WavjepaTestTones(tfds.core.GeneratorBasedBuilder):
    """Four 8 kHz int16 tones under the feature name "speech"."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "speech": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=8_000),
            "frequency": np.float32,
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        time = np.arange(8_000) / 8_000
        for index, frequency in enumerate(TONES):
            wave = (8_000 * np.sin(2 * np.pi * frequency * time)).astype(np.int16)
            yield index, {"speech": wave, "frequency": frequency}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    WavjepaTestTones(data_dir=directory, file_format="array_record").download_and_prepare()
    return directory


def tfds_config(data_dir, **data):
    config = configuration.default_config()
    config.batch_size = 4
    config.data.update(dict(source="tfds", path="wavjepa_test_tones", tfds_data_dir=data_dir,
                            tfds_split="train", tfds_audio_key="speech", clip_seconds=1.0,
                            crop_samples=4_000, crops_per_clip=2), **data)
    return config


def test_tfds_source_yields_resampled_standardised_crops(data_dir):
    iterator = make_train_iterator(tfds_config(data_dir))
    found = set()
    for _ in range(4):
        batch = next(iterator)
        assert batch["audio"].shape == (4, 4_000) and batch["audio"].dtype == np.float32
        assert batch["skipped_files"] == 0
        np.testing.assert_allclose(batch["audio"].std(axis=1), 1.0, atol=1e-3)
        for crop in batch["audio"]:
            spectrum = np.abs(np.fft.rfft(crop * np.hanning(crop.size)))
            peak = np.fft.rfftfreq(crop.size, 1 / 16_000)[np.argmax(spectrum)]
            found.add(min(TONES, key=lambda tone: abs(tone - peak)))
            assert min(abs(tone - peak) for tone in TONES) < 8
    assert found == set(TONES)  # Two epochs of four clips: every example was read.


def test_unknown_audio_key_names_the_field(data_dir):
    with pytest.raises(ValueError, match="data.tfds_audio_key"):
        make_train_iterator(tfds_config(data_dir, tfds_audio_key="audio"))


def test_a_non_audio_feature_as_audio_key_is_refused(data_dir):
    with pytest.raises(ValueError, match=r"tfds_audio_key='frequency' names a feature of shape"):
        make_train_iterator(tfds_config(data_dir, tfds_audio_key="frequency",
                                        tfds_sample_rate=8_000))


def test_missing_dataset_names_the_fields(tmp_path):
    with pytest.raises(ValueError, match="data.tfds_data_dir"):
        make_train_iterator(tfds_config(str(tmp_path), path="no_such_wavjepa_dataset"))
