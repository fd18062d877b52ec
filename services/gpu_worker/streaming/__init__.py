"""Live streams on a worker: the call's reader and writer, the session over a sliding buffer, voice activity
and word agreement."""
