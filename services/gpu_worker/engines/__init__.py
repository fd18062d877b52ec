"""Whisper runtimes behind one `Engine` interface (`base`): CTranslate2 and PyTorch, their weights, and the
window decoding they share."""
