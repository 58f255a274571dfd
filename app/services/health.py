"""What GET /v1/health reports: the database answers, the index sizes, the path in force."""
from __future__ import annotations

import sqlalchemy as sa

from app.services import registry


def health(services) -> dict:
    with services.session() as session:
        session.execute(sa.text("SELECT 1"))
    with services.session() as session:
        current = registry.deployment_to_dict(registry.current_deployment(session))
    return {"status": "ok", "index": services.gallery.sizes(),
            "enroll_model": current["enrollment_space"] if current else None,
            "runtime_model": current["runtime_model"] if current else None,
            "deployment": current["id"] if current else None}
