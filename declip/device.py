"""The one place that turns a `--device` argument into a torch device (used by every layer)."""

from declip.errors import UserFacingError


def pick_device(name: str = "auto"):
    """`auto` -> the first CUDA device when one is visible, else the CPU; otherwise the named device,
    refusing CUDA when none is visible (a clear error instead of a crash deep inside a forward)."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserFacingError(f"--device {name!r} is not a device ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(f"--device {name} asked for CUDA but no GPU is visible; use --device auto or cpu")
    return device
