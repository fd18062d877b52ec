"""scribe: a gRPC gateway that shards speech transcription over supervised faster-whisper workers."""
