"""What the gateway, the workers, the HTTP face and the CLI share: settings, audio decoding, errors, auth,
logging, TLS."""
