"""Diarization evaluation from the command line (builds GE2E + the artifact; library code
lives in ``diarizer.evaluate``).

    python -m bench.diarization ../shared/data/conversations/pyannote-clips --subset development
    python -m bench.diarization ../shared/data/librispeech/test-other --simulate 5 --name
"""
from __future__ import annotations

import argparse
import json
import pathlib

from diarizer.evaluate import evaluate_folder, evaluate_simulated

def build_diarizer(args):
    import torch

    from nessa.artifact import AlignmentArtifact
    from runtime_models.ge2e import GE2EEmbedder
    from diarizer import Diarizer, DiarizerConfig

    torch.set_num_threads(args.threads)
    config = DiarizerConfig(method=args.method, features=args.features,
                            ahc_threshold=args.threshold, window_s=args.window, hop_s=args.hop,
                            speech_source=args.speech_source)
    overlap = None
    if args.overlap_detection:
        from diarizer.overlap import OverlapDetector
        overlap = OverlapDetector()
    from bench.diarization_compare import default_artifact_dir

    return Diarizer(GE2EEmbedder(), AlignmentArtifact.load(args.artifact or default_artifact_dir()), config=config,
                    overlap_detector=overlap)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diarization", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of audio + RTTM (with .lst/.uem), or <speaker>/<utt> "
                                       "folders with --simulate")
    parser.add_argument("--artifact", default=None,
                        help="alignment artifact folder (default: the service's default alignment)")
    parser.add_argument("--subset", action="append", help="lst subset(s), e.g. development, test")
    parser.add_argument("--method", default="spectral", choices=["spectral", "ahc"])
    parser.add_argument("--features", default="raw", choices=["raw", "aligned", "concat", "centered"])
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--window", type=float, default=1.5)
    parser.add_argument("--hop", type=float, default=0.75)
    parser.add_argument("--overlap-detection", action="store_true",
                        help="label overlapped speech with pyannote segmentation-3.0")
    parser.add_argument("--speech-source", default="segmentation", choices=["silero", "segmentation", "union"],
                        help="with --overlap-detection (ignored without it)")
    parser.add_argument("--oracle-count", action="store_true", help="pass the true speaker count")
    parser.add_argument("--simulate", type=int, default=0, help="simulate N conversations instead")
    parser.add_argument("--speakers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--overlap", type=float, default=0.1)
    parser.add_argument("--snr", type=float, default=None)
    parser.add_argument("--name", action="store_true", help="with --simulate: enroll with CAM++ and score naming")
    parser.add_argument("--strangers", type=int, default=0,
                        help="with --name: leave this many speakers of each conversation unenrolled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plots", help="write timeline PNGs here")
    parser.add_argument("--hyp-dir", help="write hypothesis RTTMs here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    diarizer = build_diarizer(args)
    if args.simulate:
        enroll = None
        if args.name:
            from enroll_models.campplus import CamPlusPlusEmbedder
            enroll = CamPlusPlusEmbedder()
        report = evaluate_simulated(diarizer, args.folder, conversations=args.simulate,
                                    num_speakers=args.speakers, turns=args.turns, seed=args.seed,
                                    overlap_ratio=args.overlap, snr_db=args.snr,
                                    enroll_embedder=enroll, strangers=args.strangers,
                                    verbose=args.verbose)
    else:
        report = evaluate_folder(diarizer, args.folder, args.subset, plot_dir=args.plots,
                                 hints="oracle" if args.oracle_count else None,
                                 hypothesis_dir=args.hyp_dir, verbose=args.verbose)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
