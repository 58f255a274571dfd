"""Every request and response shape of /v1, declared once: request shapes validate what
clients send (app.web.requests) and both kinds make /v1/openapi.json (app.web.openapi)."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from app.services.keys import MAX_KEY_LIFETIME, SCOPES, expiry_at, expiry_in_days
from app.errors import bad_request
from app.store.models import ENROLLMENT_STATUSES, JOB_STATUSES
from app.web.fields import (AudioFile, Durations, FarTarget, Flag, Integer, Name, NameOr, NonNegative, OptionalName, OptionalText,
                            RowId, SpeakerIds, StringList, Text, described, integer_schema)
from app.web.inputs import MAX_ID


# -- requests ------------------------------------------------------------------------
class Body(BaseModel):
    """A JSON object body; fields that are not declared are refused (invalid_fields)."""
    model_config = ConfigDict(extra="forbid")
    #: a body that may be left out entirely (every field optional)
    optional: ClassVar[bool] = False


class Form(BaseModel):
    """A multipart/form-data body."""
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    #: the parts that are files
    files: ClassVar[frozenset] = frozenset({"audio"})
    #: fields that may be repeated (the check sees every value)
    repeated: ClassVar[frozenset] = frozenset()


class Query(BaseModel):
    """Query parameters; others are ignored."""
    model_config = ConfigDict(extra="ignore")


class NewSpeaker(Body):
    name: Name
    external_id: OptionalText = None


class Page(Query):
    limit: Integer(1, 1000) = 100
    offset: Integer(0, MAX_ID) = 0


class HistoryQuery(Query):
    limit: Integer(1, 1000) = 100


class EnrollmentUpload(Form):
    audio: AudioFile


class IdentifyForm(Form):
    repeated: ClassVar[frozenset] = frozenset({"candidates"})
    audio: AudioFile
    top_k: Integer(1, 100) = 5
    candidates: SpeakerIds("restrict to these speaker ids") = None
    far_target: FarTarget = None


class VerifyForm(Form):
    audio: AudioFile
    speaker_id: RowId
    far_target: FarTarget = None


class DiarizeForm(Form):
    repeated: ClassVar[frozenset] = frozenset({"candidates"})
    audio: AudioFile
    candidates: SpeakerIds("name speakers only among these ids") = None
    num_speakers: Integer(1, 100) = None
    min_speakers: Integer(1, 100) = None
    max_speakers: Integer(1, 100) = None


class DiarizeQuery(Query):
    format: Annotated[str, WithJsonSchema({"type": "string", "enum": ["json", "rttm"]})] = "json"

    @model_validator(mode="after")
    def known_format(self):
        if self.format not in ("json", "rttm"):
            raise bad_request("invalid_field", "'format' must be json or rttm.", field="format", value=self.format)
        return self


_SCOPES_SCHEMA = {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(SCOPES)}}


class NewKey(Body):
    name: NameOr("api") = "api"
    scopes: StringList(_SCOPES_SCHEMA)
    # checked by app.services.keys (the CLI's checks too), with its invalid_expiry errors
    expires_in_days: Annotated[Any, WithJsonSchema(integer_schema(1, MAX_KEY_LIFETIME.days))] = None
    expires_at: Annotated[Any, WithJsonSchema({"type": "string", "format": "date-time",
                                               "description": "with a time zone; not with expires_in_days"})] = None

    def expiry(self):
        """The key's expiry (None: never); `expires_in_days` or `expires_at`, at most one."""
        if self.expires_in_days is not None and self.expires_at is not None:
            raise bad_request("invalid_fields", "Give 'expires_in_days' or 'expires_at', not both.",
                              fields=["expires_in_days", "expires_at"])
        if self.expires_in_days is not None:
            return expiry_in_days(self.expires_in_days)
        return None if self.expires_at is None else expiry_at(self.expires_at)


class NewModel(Body):
    name: Name


class Reembedding(Body):
    optional: ClassVar[bool] = True
    bridge: described(OptionalName, "alignment for enrollments without retained audio") = None


class NewAlignment(Body):
    path: Name


class AlignmentEvaluation(Body):
    optional: ClassVar[bool] = True
    eval_dir: OptionalName = None
    n_enroll: Integer(1, 20, nullable=True) = None
    max_speakers: Integer(1, 100000, nullable=True) = None
    max_queries: Integer(1, 1000, nullable=True) = None
    crops: Durations = None
    tolerance_eer_points: NonNegative = None
    tolerance_top1_points: NonNegative = None


class NewDeployment(Body):
    alignment: Name
    force: Flag = False


# -- responses -----------------------------------------------------------------------
class Shape(BaseModel):
    """A response shape; responses may carry fields added later (clients ignore them)."""
    model_config = ConfigDict(extra="allow")


Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Object = dict[str, Any]


class Error(Shape):
    code: str
    message: str
    detail: Object


class Health(Shape):
    status: Literal["ok"]
    index: dict[str, int] = Field(description="vectors per embedding space in the in-memory index")
    enroll_model: Optional[str]
    runtime_model: Optional[str]
    deployment: Optional[int]


class OpenApiDocument(Shape):
    openapi: str
    info: Object
    paths: Object


class Enrollment(Shape):
    id: int
    speaker_id: int
    status: Literal[ENROLLMENT_STATUSES]
    audio_sha256: str
    duration_s: float
    speech_s: Optional[float]
    audio_retained: bool
    error: Optional[str]
    created_at: Timestamp
    completed_at: Optional[Timestamp]


class Profile(Shape):
    space: str
    model_version: str
    n_embeddings: int
    n_bridged: int
    updated_at: Timestamp


class Speaker(Shape):
    id: int
    name: str
    external_id: Optional[str]
    created_at: Timestamp
    enrollments: list[Enrollment]
    profiles: list[Profile]
    enrolled: bool


class SpeakerPage(Shape):
    speakers: list[Speaker]
    total: int
    limit: int
    offset: int


class Job(Shape):
    id: int
    kind: str
    status: Literal[JOB_STATUSES]
    attempts: int
    max_attempts: int
    progress: Optional[float]
    error: Optional[str]
    result: Optional[Object]
    payload: Optional[Object]
    parent_id: Optional[int]
    created_at: Optional[Timestamp]
    started_at: Optional[Timestamp]
    finished_at: Optional[Timestamp]
    children: Optional[Object] = Field(None, description="a parent job's children by status")


class JobAccepted(Shape):
    job: Job


class EnrollmentAccepted(Shape):
    job: Job
    enrollment: Enrollment


class JobRef(Shape):
    id: int
    kind: str
    status: str


class DiarizationAccepted(Shape):
    job: JobRef
    duration_s: float


class SpeakerRef(Shape):
    id: int
    name: Optional[str]


class Models(Shape):
    deployment: Optional[int]
    runtime_model: str
    enrollment_space: str
    alignment: str


class Candidate(Shape):
    id: int
    name: str
    score: float
    scoring: str
    bridged_profile: bool


class OperatingPoint(Shape):
    far_target: float = Field(description="the false-accept rate the threshold was chosen for")
    threshold_name: str
    calibration: Literal["shipped", "gallery"] = Field(description="the artifact's, or refitted on the gallery")


class GalleryPathMap(Shape):
    """One scoring path's map: llr -> min(scale * llr + bias, llr)."""
    scale: float
    bias: float
    n_nontargets: int = Field(description="in-domain impostor trials (an enrollment against another speaker)")
    n_targets: int = Field(description="in-domain genuine trials (an enrollment against its speaker's others)")
    figures: Object = Field(description="in-domain FAR / FRR per operating point, shipped vs gallery calibration")


class GalleryFit(Shape):
    """The newest fit of the calibration on the gallery's own enrollments."""
    fit_id: int
    source: Literal["shipped", "gallery"] = Field(description="shipped: the gallery was too small for a fit")
    alignment: str
    fitted_at: Timestamp
    n_profiles: int
    n_enrollments: int = Field(description="enrollments scored as queries (a seeded sample of a large gallery)")
    paths: dict[str, GalleryPathMap] = Field(description="scoring path (fused, alignment) -> its map")


class Calibration(Shape):
    """The calibration in force: where it came from and its LLR thresholds."""
    source: Literal["shipped", "gallery"]
    artifact: str
    far_target: float = Field(description="the default operating point (NESSA_FAR_TARGET)")
    gallery_calibration: bool = Field(description="whether the gallery-aware calibration is enabled "
                                                   "(NESSA_GALLERY_CALIBRATION)")
    gallery_fit: Optional[GalleryFit] = Field(description="the newest fit for this artifact (none yet: null)")
    thresholds: dict[str, dict[str, float]] = Field(description="operating point -> scoring path -> LLR threshold")


class Identification(Shape):
    speaker: Optional[SpeakerRef]
    score: Optional[float] = Field(description="calibrated log-likelihood ratio")
    threshold: float
    operating_point: OperatingPoint
    scoring: Optional[Literal["fused", "alignment"]]
    candidates: list[Candidate]
    speech_seconds: float
    models: Models
    timings_ms: dict[str, float]


class SuspectCheck(Shape):  # verify against the rest of the gallery (NESSA_SUSPECT_CHECK, _MARGIN)
    margin: float = Field(description="suspect when another profile scores >= the claimed score + margin")
    suspect: bool
    competing_score: Optional[float] = Field(description="best LLR of another profile on the same path")
    competing_speaker_id: Optional[int] = Field(description="its speaker (admin keys only)")


class Verification(Shape):
    accepted: bool
    reason: Optional[Literal["below_threshold", "suspect_other_profile"]] = Field(description="null when accepted")
    score: float = Field(description="calibrated log-likelihood ratio")
    threshold: float
    operating_point: OperatingPoint
    scoring: str
    suspect_check: Optional[SuspectCheck] = Field(description="null when the check is off")
    bridged_profile: bool
    speaker: SpeakerRef
    speech_seconds: float
    models: Models
    timings_ms: dict[str, float]


class DiarizedSegment(Shape):
    start: float
    end: float
    label: str
    speaker: Optional[SpeakerRef]
    score: Optional[float]


class DiarizedSpeaker(Shape):
    label: str
    speaker: Optional[SpeakerRef]
    score: Optional[float]
    speech_seconds: float
    segments: int


class Diarization(Shape):
    duration: float
    num_speakers: int
    segments: list[DiarizedSegment]
    speakers: list[DiarizedSpeaker]
    info: Object = Field(description="how the number of speakers was decided, clustering, timings")
    models: Models


class ApiKey(Shape):
    """A key as listed; the key itself is shown only when created (field `key`), its hash never."""
    id: int
    name: str
    prefix: str
    scopes: list[Literal[SCOPES]]
    state: Literal["active", "revoked", "expired"]
    created_at: Timestamp
    last_used_at: Optional[Timestamp] = Field(description="written at most once a minute")
    expires_at: Optional[Timestamp]
    revoked_at: Optional[Timestamp]


class CreatedKey(ApiKey):
    key: str = Field(description="the key itself, shown this once")


class KeyList(Shape):
    keys: list[ApiKey]


class Deployment(Shape):
    """A runtime path put in force."""
    id: int
    enrollment_space: str
    runtime_model: str
    alignment: str
    action: str
    actor: str
    gate: Optional[Object]
    created_at: Timestamp


class ModelVersion(Shape):
    name: str
    role: str
    dim: int
    state: str
    weights_sha256: Optional[str]
    profiles: int
    bridged_profiles: int
    evaluation: Optional[Object]
    created_at: Optional[Timestamp]
    updated_at: Optional[Timestamp]


class Alignment(Shape):
    name: str
    source_version: str
    target_version: str
    state: str
    sha256: str
    threshold: Optional[float]
    evaluation: Optional[Object]
    created_at: Optional[Timestamp]
    activated_at: Optional[Timestamp]


class Registry(Shape):
    active: Optional[Deployment]
    models: list[ModelVersion]
    alignments: list[Alignment]
    calibration: Optional[Calibration] = Field(None, description="GET /v1/models: the calibration in force")


class AlignmentList(Shape):
    alignments: list[Alignment]


class RegisteredAlignment(Shape):
    name: str
    state: str
    source_version: str
    target_version: str
    sha256: str


class RegistryEvent(Shape):
    id: int
    actor: str
    action: str
    subject_kind: str
    subject: str
    details: Optional[Object]
    created_at: Timestamp


class History(Shape):
    deployments: list[Deployment]
    events: list[RegistryEvent]
