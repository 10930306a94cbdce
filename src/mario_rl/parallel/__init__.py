"""How replicas of a trainer talk: a collective interface with a one-process implementation
(:mod:`.collective`) and a torch.distributed one for torchrun (:mod:`.distributed`)."""
