"""Every call's windows in one queue: cutting recordings into windows, packing short ones, the batch
scheduler, and the transcriber that puts results back in audio order."""
