"""Files on disk: checkpoints (safetensors + JSON, atomic, validated) and the state codec that
turns nested training state into tensors + JSON. Knows no algorithm."""
