"""wavjepa_jax.data.sources: which files a folder source reads."""

import os

from wavjepa_jax.data import sources


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_a_folder_of_links_is_read_whole_and_a_link_back_up_does_not_loop(tmp_path):
    touch(tmp_path / "speech" / "b.wav")
    touch(tmp_path / "speech" / "deeper" / "c.flac")
    touch(tmp_path / "music" / "a.wav")
    touch(tmp_path / "music" / "notes.txt")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    os.symlink(tmp_path / "speech", corpus / "speech")
    os.symlink(tmp_path / "music", corpus / "music")
    os.symlink(corpus, tmp_path / "speech" / "up")          # A cycle: corpus/speech/up -> corpus.
    found = sources.list_audio_files(str(corpus))
    assert [os.path.relpath(path, corpus) for path in found] == [
        os.path.join("music", "a.wav"), os.path.join("speech", "b.wav"),
        os.path.join("speech", "deeper", "c.flac")]
