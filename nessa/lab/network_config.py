"""The configuration of an alignment network: architecture, initialisation, pairs, losses,
optimisation, what is applied after training, and the runtime scoring stored with it."""
from __future__ import annotations

import dataclasses

from nessa.lab.config import config_from_any
from nessa.lab.data import ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST
from nessa.network import ARCHITECTURES, KIND_OF
from nessa.scoring import CANDIDATE_FEATURES, TOWER_FEATURES

#: which plan segments of a speaker's files are training pairs
PAIR_ROLES = {"chunks": (ROLE_CHUNK, ROLE_FULL), "all": (ROLE_CHUNK, ROLE_FULL, ROLE_PROFILE, ROLE_TEST)}


def _normalise_domain_weights(values: dict) -> dict:
    """domain_weights as sorted (name, weight) pairs, from a dict or a sequence of pairs."""
    if "domain_weights" in values:
        weights = values["domain_weights"]
        items = weights.items() if isinstance(weights, dict) else weights
        values["domain_weights"] = tuple(sorted((str(k), float(v)) for k, v in items))
    return values


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture, initialisation, losses and optimisation of an alignment network."""

    arch: str = "resmlp"
    hidden: int = 512
    #: two-tower only: dimension of the shared space and hidden size of the target tower
    shared_dim: int = 128
    target_hidden: int = 128
    #: "ridge" (linear part = the ridge solution), "cca" (two-tower: both linear parts =
    #: weighted CCA projections) or "random"
    init: str = "ridge"
    ridge_alpha: float = 3.0
    cca_shrinkage: float = 0.8
    #: which plan segments of training speakers are pairs ("chunks": random chunks and
    #: whole utterances, as ridge; "all": also the profile / test tiles)
    pair_roles: str = "all"
    epochs: int = 20
    steps_per_epoch: int = 40
    speakers_per_batch: int = 64
    chunks_per_speaker: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: penalty ``l2_init * sum((p - p_init)^2)`` pulling every trained array towards its
    #: initial value (L2-SP: keeps a ridge/CCA-initialised net near its linear solution)
    l2_init: float = 0.0
    #: fit the ridge / CCA initialisation on this domain's pairs only ("": every pair)
    init_domain: str = ""
    #: sampling weight of pairs of at least ``long_seconds`` within a speaker's batch rows
    #: (1: uniform; long queries are few among the chunks but are what full-length tests are)
    long_pair_weight: float = 1.0
    long_seconds: float = 4.0
    #: Gaussian noise on the standardised runtime input while training (std)
    input_noise: float = 0.0
    dropout: float = 0.0
    # loss weights
    w_cosine: float = 1.0
    w_mse: float = 0.0
    w_contrastive: float = 1.0
    #: two-tower: contrastive term among target-tower outputs (keeps the profile side discriminative)
    w_target_contrastive: float = 0.0
    temperature: float = 0.1
    #: GLSC-SDR global term: AAM classification against all training speakers' prototypes
    w_global: float = 0.0
    global_scale: float = 30.0
    global_margin: float = 0.1
    #: (domain, weight) pairs; a domain is the folder name of a training corpus; others weigh 1
    domain_weights: tuple = ()
    #: corpora whose median clip is shorter than this are concatenated per speaker (0: never)
    concatenate_below_seconds: float = 2.0
    #: WiSE-FT: the exported weights are ``init + wise_alpha * (trained - init)`` (1: the
    #: trained weights; 0: the initial, e.g. CCA, solution). Robust fine-tuning under
    #: distribution shift (Wortsman et al., 2022).
    wise_alpha: float = 1.0
    #: weight-space ensemble ("model soup"): this many runs from the *same* initial weights
    #: with different batch orders (seed, seed+1, ...), averaged
    soup: int = 1
    #: keep the linear (CCA / ridge) parts fixed and train only the residual branches
    freeze_linear: bool = False
    #: two-tower only: score weight of a fixed linear CCA branch fitted on the primary
    #: corpus' pairs (kind nn-twotower-cca: cosine = (1 - b) cos_tower + b cos_cca; 0: none)
    cca_branch: float = 0.0
    cca_branch_shrinkage: float = 0.6
    #: which segments of the primary corpus the branch is fitted on: "chunks" (random chunks
    #: and whole utterances, as nessa.lab.train's CCA) or "all" (also the profile / test tiles)
    cca_branch_pairs: str = "chunks"
    # runtime scoring stored in the artifact (``scoring``; used by score_candidates)
    #: adaptive S-norm of the fused features against a cohort of the primary corpus'
    #: speakers stored in the artifact: top-k (0: off)
    snorm_top_k: int = 0
    #: comma-separated features of the fused score (nessa.scoring.CANDIDATE_FEATURES)
    fused_features: str = "runtime_cosine,cross_cosine"
    #: comma-separated features that are S-normalised (with snorm_top_k; "": all fused ones)
    snorm_features: str = ""
    #: comma-separated upper bounds (seconds) of query-duration bands, each with its own
    #: fusion / calibration fitted on the dev tests of that length ("": one for all)
    duration_bands: str = ""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}")
        if self.init not in ("ridge", "cca", "random"):
            raise ValueError("init must be ridge, cca or random")
        if self.init == "cca" and self.arch != "twotower":
            raise ValueError("init=cca needs arch=twotower")
        if self.init == "ridge" and self.arch not in ("linear", "resmlp"):
            raise ValueError("init=ridge needs arch=linear or resmlp")
        if self.pair_roles not in PAIR_ROLES:
            raise ValueError(f"pair_roles must be one of {sorted(PAIR_ROLES)}")
        if self.soup < 1:
            raise ValueError("soup must be >= 1")
        if self.cca_branch and (self.arch != "twotower" or not 0.0 < self.cca_branch < 1.0):
            raise ValueError("cca_branch needs arch=twotower and a weight between 0 and 1")
        if self.cca_branch_pairs not in PAIR_ROLES:
            raise ValueError(f"cca_branch_pairs must be one of {sorted(PAIR_ROLES)}")
        unknown = (set(self.fused_feature_names) | set(self.snorm_feature_names)) - set(CANDIDATE_FEATURES)
        if unknown or not self.fused_feature_names:
            raise ValueError(f"fused_features must name some of {CANDIDATE_FEATURES}, got {self.fused_features!r}")
        if not self.cca_branch and set(TOWER_FEATURES) & (set(self.fused_feature_names) | set(self.snorm_feature_names)):
            raise ValueError(f"{', '.join(TOWER_FEATURES)} need a CCA branch (cca_branch > 0)")
        _ = self.band_edges

    @property
    def fused_feature_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.fused_features.split(",") if name.strip())

    @property
    def snorm_feature_names(self) -> tuple[str, ...]:
        names = tuple(name.strip() for name in self.snorm_features.split(",") if name.strip())
        return names or self.fused_feature_names

    @property
    def band_edges(self) -> tuple[float, ...]:
        edges = tuple(float(v) for v in self.duration_bands.split(",") if v.strip())
        if list(edges) != sorted(set(edges)):
            raise ValueError("duration_bands must be increasing")
        return edges

    @property
    def rich_scoring(self) -> bool:
        """Whether the artifact gets a ``scoring`` section (anything beyond the plain fusion)."""
        return bool(self.snorm_top_k or self.band_edges
                    or self.fused_feature_names != ("runtime_cosine", "cross_cosine"))

    @property
    def kind(self) -> str:
        return "nn-twotower-cca" if self.cca_branch else KIND_OF[self.arch]

    def domain_weight(self, domain: str) -> float:
        return float(dict((str(k), float(v)) for k, v in self.domain_weights).get(domain, 1.0))

    @classmethod
    def from_any(cls, config: "NetworkConfig | dict | None") -> "NetworkConfig":
        return config_from_any(cls, config, "network", prepare=_normalise_domain_weights)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["domain_weights"] = {k: v for k, v in self.domain_weights}
        return out
