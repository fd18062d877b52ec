"""The gateway process: the public gRPC API, routed to the workers."""
