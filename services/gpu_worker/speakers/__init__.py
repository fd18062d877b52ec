"""Speaker labels on a worker: voice embeddings of speech (CAM++ on onnxruntime), batched over calls."""
