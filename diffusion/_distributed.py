"""Former name of :mod:`diffusion.distributed` (torchrun detection and collectives); re-exported here."""
from diffusion.distributed import DistContext, setup

__all__ = ["DistContext", "setup"]
