"""scribe's HTTP face: an OpenAI-compatible transcription API and a live status page.

It runs beside the gateway (supervisord's `http` program) and reaches the fleet only through the
gateway's gRPC API, with the caller's bearer token, so every limit, the queue and the tokens apply to
HTTP callers exactly as to gRPC ones.
"""
