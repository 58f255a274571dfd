"""/v1/identify and /v1/verify: who is speaking, and is it who they claim."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from app.services import recognition
from app.web.auth import current_key_is_admin
from app.web.batch_schemas import IdentifyBatch, IdentifyBatchForm
from app.web.operations import Reply, operation
from app.web.schemas import Identification, IdentifyForm, Verification, VerifyForm

bp = Blueprint("recognition", __name__)


@operation(bp, "POST", "/v1/identify", access="identify", form=IdentifyForm, errors=("404", "422"),
           replies=Reply(200, Identification), summary="Who is speaking? (open set: speaker null when unknown)")
def identify(form: IdentifyForm):
    # identify refuses unknown candidates (404) before it reads the audio, in its one session
    result = recognition.identify(current_app.extensions["nessa"], form.audio.read(), top_k=form.top_k,
                                  candidates=form.candidates, far_target=form.far_target)
    _observe_embedding(result)
    return jsonify(result)


@operation(bp, "POST", "/v1/identify/batch", access="identify", form=IdentifyBatchForm, errors=("404", "422"),
           replies=Reply(200, IdentifyBatch),
           summary="Who is speaking in each of several clips? (scored together; errors per clip)")
def identify_batch(form: IdentifyBatchForm):
    result = recognition.identify_batch(current_app.extensions["nessa"], [upload.read() for upload in form.audio],
                                        top_k=form.top_k, candidates=form.candidates, far_target=form.far_target)
    for item in result["items"]:
        if "result" in item:
            _observe_embedding(item["result"])
    return jsonify(result)


@operation(bp, "POST", "/v1/verify", access="identify", form=VerifyForm, errors=("404", "409", "422"),
           replies=Reply(200, Verification), summary="Is this the claimed speaker?")
def verify(form: VerifyForm):
    result = recognition.verify(current_app.extensions["nessa"], form.audio.read(), speaker_id=form.speaker_id,
                                far_target=form.far_target)
    if result["suspect_check"] is not None and not current_key_is_admin():
        # who else the audio matches is another speaker's business: admin keys only
        result["suspect_check"]["competing_speaker_id"] = None
    _observe_embedding(result)
    return jsonify(result)


def _observe_embedding(result: dict) -> None:
    embed_ms = result.get("timings_ms", {}).get("embed")
    if embed_ms is not None:
        metrics = current_app.extensions["nessa_metrics"]
        metrics.embedding.labels(result["models"]["runtime_model"]).observe(embed_ms / 1e3)
