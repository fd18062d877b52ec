"""The worker process: one Whisper model on one device, serving TranscriptionService and WorkerService on a
unix socket (or TCP in worker host mode)."""
