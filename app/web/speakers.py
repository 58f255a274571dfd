"""/v1/speakers: who can be recognised, and the audio that enrolls them."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from app.services import gallery_calibration
from app.services import speakers as speaker_service
from app.services.enrollment import submit_enrollment
from app.web.auth import current_key_id
from app.web.jobs import job_to_dict
from app.web.operations import Reply, operation
from app.web.schemas import EnrollmentAccepted, EnrollmentUpload, NewSpeaker, Page, Speaker, SpeakerPage

bp = Blueprint("speakers", __name__)


def _services():
    return current_app.extensions["nessa"]


@operation(bp, "POST", "/v1/speakers", access="enroll", body=NewSpeaker, errors=("409",),
           replies=Reply(201, Speaker, "Created"), summary="Create a speaker")
def create_speaker(body: NewSpeaker):
    with _services().session() as session:
        speaker = speaker_service.create_speaker(session, name=body.name, external_id=body.external_id)
        session.commit()
        created = speaker_service.speaker_to_dict(session, speaker)
    return jsonify(created), 201, {"Location": f"/v1/speakers/{created['id']}"}


@operation(bp, "GET", "/v1/speakers", access="enroll", query=Page, replies=Reply(200, SpeakerPage),
           summary="List speakers")
def list_speakers(query: Page):
    with _services().session() as session:
        total, rows = speaker_service.list_speakers(session, limit=query.limit, offset=query.offset)
        items = [speaker_service.speaker_to_dict(session, s) for s in rows]
    return jsonify({"speakers": items, "total": total, "limit": query.limit, "offset": query.offset})


@operation(bp, "GET", "/v1/speakers/<id:speaker_id>", access="enroll", errors=("404",),
           replies=Reply(200, Speaker), summary="Get a speaker")
def get_speaker(speaker_id: int):
    with _services().session() as session:
        return jsonify(speaker_service.speaker_to_dict(session, speaker_service.get_speaker(session, speaker_id)))


@operation(bp, "DELETE", "/v1/speakers/<id:speaker_id>", access="enroll", errors=("404",),
           replies=Reply(204, description="Deleted"),
           summary="Delete a speaker, its embeddings, stored audio and index entries")
def delete_speaker(speaker_id: int):
    services = _services()
    with services.session() as session:
        files = speaker_service.delete_speaker(session, speaker_id)
        session.commit()
    speaker_service.remove_files(files)
    speaker_service.scrub_deleted_speakers(services.engine)
    services.gallery.sync()
    gallery_calibration.schedule_if_due(services)
    return "", 204


def _speaker_exists(speaker_id: int) -> None:
    with _services().session() as session:
        speaker_service.get_speaker(session, speaker_id)


@operation(bp, "POST", "/v1/speakers/<id:speaker_id>/enrollments", access="enroll", form=EnrollmentUpload,
           guard=_speaker_exists, errors=("404", "422"), replies=Reply(202, EnrollmentAccepted, "Accepted; poll the job"),
           summary="Add enrollment audio (embedded by a background job)")
def enroll(speaker_id: int, form: EnrollmentUpload):
    enrollment, job = submit_enrollment(_services(), speaker_id, form.audio.read(), created_by_key_id=current_key_id())
    return (jsonify({"job": job_to_dict(job), "enrollment": speaker_service.enrollment_to_dict(enrollment)}),
            202, {"Location": f"/v1/jobs/{job.id}"})
