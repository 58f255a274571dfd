"""Tuning corpus for diarization defaults: Speech Commands speakers with >= 30 clips, each
clip energy-trimmed, 5 clips concatenated (0.15 s gaps) into ~3-4 s "utterances".
Writes var/corpora/sc-concat/<speaker>/uNN.flac (a <speaker>/<utterance> folder the
simulator reads). Disjoint from LibriSpeech test-other, so defaults tuned on conversations
simulated from it do not see the test speakers."""
import pathlib
import sys

import numpy as np
import soundfile as sf

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402

SRC = Settings.from_env().shared_data_dir / "speech-commands"
OUT = ROOT / "var" / "corpora" / "sc-concat"


def trim(wav, frame=160):
    energy = np.array([np.mean(wav[i:i + frame] ** 2) for i in range(0, len(wav) - frame, frame)])
    if not len(energy) or energy.max() == 0:
        return wav
    on = np.flatnonzero(energy > energy.max() * 0.02)
    return wav[max(0, on[0] * frame - 800):min(len(wav), (on[-1] + 1) * frame + 800)]


def main(max_speakers=40):
    speakers = sorted(d for d in SRC.iterdir() if d.is_dir() and len(list(d.glob("*.flac"))) >= 30)
    rng = np.random.default_rng(0)
    for d in speakers[:max_speakers]:
        files = sorted(d.glob("*.flac"))
        files = [files[i] for i in rng.permutation(len(files))]
        out = OUT / d.name
        out.mkdir(parents=True, exist_ok=True)
        gap = np.zeros(int(0.15 * 16000), np.float32)
        for k in range(len(files) // 5):
            pieces = []
            for f in files[5 * k:5 * k + 5]:
                w, sr = sf.read(f, dtype="float32")
                pieces += [trim(w), gap]
            sf.write(out / f"u{k:02d}.flac", np.concatenate(pieces), 16000)
    print(len(speakers[:max_speakers]), "speakers", file=sys.stderr)


if __name__ == "__main__":
    main()
