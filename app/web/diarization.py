"""/v1/diarize: who spoke when, named against the gallery."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.services import diarization
from app.web.auth import current_key_id
from app.web.operations import Reply, operation
from app.web.schemas import Diarization, DiarizationAccepted, DiarizeForm, DiarizeQuery

bp = Blueprint("diarization", __name__)


@operation(bp, "POST", "/v1/diarize", access="identify", query=DiarizeQuery, form=DiarizeForm,
           errors=("404", "422"),
           replies=(Reply(200, Diarization, "segments and speakers (JSON), or RTTM with format=rttm",
                          media=("text/plain",)),
                    Reply(202, DiarizationAccepted, "long recording: a job; the same result at /v1/jobs/{id}")),
           summary="Who spoke when, with speakers named against the gallery (unknown-N otherwise)")
def diarize(query: DiarizeQuery, form: DiarizeForm):
    options = {"candidates": form.candidates}
    options.update({name: getattr(form, name) for name in ("num_speakers", "min_speakers", "max_speakers")
                    if getattr(form, name) is not None})
    status, body = diarization.submit_or_run(current_app.extensions["nessa"], form.audio.read(),
                                             created_by_key_id=current_key_id(), **options)
    if status == 200 and query.format == "rttm":
        return Response(diarization.rttm_text(body), mimetype="text/plain")
    headers = {"Location": f"/v1/jobs/{body['job']['id']}"} if status == 202 else {}
    return jsonify(body), status, headers
