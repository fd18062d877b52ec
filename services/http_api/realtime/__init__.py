"""`/v1/realtime?intent=transcription`: OpenAI's Realtime API, transcription sessions, over the gateway's
StreamingTranscribe. protocol (client events in, error shapes) → config (the session's settings) →
items (gRPC results to server events, pure) → stream (one gRPC stream) → session (the session's streams
in order, limits) → socket (the WebSocket route, auth, origins) and access (who may connect)."""
