"""Speaker labels in the gateway: one clustering over every piece of a recording, labels on its words."""
