"""Shared plumbing used by every other package: audio decoding, VAD and the embedder
interface. It imports none of app/, nessa/, enroll_models/ or runtime_models/."""
