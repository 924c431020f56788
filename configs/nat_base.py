"""WavJEPA-Nat: the binaural base model trained on simulated naturalistic scenes.

    python -m wavjepa_jax.train --config configs/nat_base.py --workdir DIR \
        --config.data.source=arrayrecord --config.data.path=/data/audioset_shards \
        [--config.data.scene.rir_path=/data/binaural_rooms]

Each (mono) clip becomes, with probability data.scene.prob, a binaural scene: convolved with one
2-channel impulse response of a room, plus another clip of the corpus through a second response
of the same room as noise at -5..5 dB SNR (rooms from data.scene.rir_path, else the built-in
statistical rooms); the rest stay dry, both ears the same. One conv stack per ear
(model.share_channel_frontend=True: one for both), 2 x 200 tokens per 2.01 s crop, coded by time
in half the width and by ear in the other; a masked time span is hidden in both ears.
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model.dtype = "bfloat16"
    configuration.binaural(config, scene_prob=0.8)   # 20% of the clips stay dry (clean)
    config.data.num_workers = 8
    return config
