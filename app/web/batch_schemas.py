"""The shapes of POST /v1/identify/batch (declared once, like app.web.schemas: they validate
the form and make the OpenAPI document)."""
from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import Field

from app.web.fields import AudioFiles, FarTarget, Integer, SpeakerIds
from app.web.schemas import Error, Form, Identification, Models, Shape


class IdentifyBatchForm(Form):
    repeated: ClassVar[frozenset] = frozenset({"audio", "candidates"})
    audio: AudioFiles
    top_k: Integer(1, 100) = 5
    candidates: SpeakerIds("restrict to these speaker ids") = None
    far_target: FarTarget = None


class ItemError(Error):
    status: int = Field(description="the HTTP status this clip alone would have had")


class IdentifyBatchItem(Shape):
    index: int = Field(description="the clip's position among the request's 'audio' parts")
    result: Optional[Identification] = Field(None, description="as POST /v1/identify answers")
    error: Optional[ItemError] = Field(None, description="why this clip was not identified")


class IdentifyBatch(Shape):
    items: list[IdentifyBatchItem]
    identified: int
    failed: int
    models: Models
