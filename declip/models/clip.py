"""Creating, loading and saving CLIP models through upstream open_clip, from local files only.

The mini preset's tiny CLIP and the full-scale EVA-CLIP / OpenAI weights go through the same
`load_clip`: only the config (`student` section) differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from declip.config import resolve_path
from declip.errors import UserFacingError

log = logging.getLogger(__name__)


def register_custom_config(student_cfg: dict) -> None:
    """Make a config-defined model (the mini tiny CLIP) known to open_clip under `student.model`."""
    custom = student_cfg.get("custom_config")
    if custom:
        import open_clip.factory

        open_clip.factory._MODEL_CONFIGS[student_cfg["model"]] = dict(custom)


def create_clip(student_cfg: dict):
    """An open_clip CLIP with random weights (no download: pretrained towers are switched off)."""
    import open_clip

    register_custom_config(student_cfg)
    if student_cfg["model"] not in open_clip.list_models():
        raise UserFacingError(
            f"open_clip has no model {student_cfg['model']!r} (config key `student.model`); "
            "use an open_clip name such as EVA02-B-16, or give `student.custom_config`"
        )
    return open_clip.create_model(student_cfg["model"], pretrained=None, pretrained_image=False, pretrained_text=False)


def load_state_dict(path: str | Path) -> dict:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_clip(student_cfg: dict, checkpoint: str | Path | None = None, checkpoint_format: str | None = None):
    """The student CLIP with weights from a local checkpoint (open_clip or EVA-CLIP key layout), eval mode.

    `checkpoint` defaults to `student.checkpoint` (the original weights).
    """
    path = resolve_path(checkpoint or student_cfg["checkpoint"])
    original = resolve_path(student_cfg["checkpoint"])
    # The suite's own outputs (distilled checkpoints) are always open_clip layout; only the original
    # weights come in `student.checkpoint_format`.
    fmt = checkpoint_format or (student_cfg.get("checkpoint_format", "open_clip") if path == original else "open_clip")
    if not path.exists():
        raise UserFacingError(
            f"CLIP checkpoint {path} does not exist (config key `student.checkpoint`). "
            "Run the workflow's download step (full presets) or the `pretrain` rule (mini preset) first."
        )
    model = create_clip(student_cfg)
    sd = load_state_dict(path)
    if fmt == "eva-clip":
        from declip.models.convert import eva_clip_to_open_clip

        sd = eva_clip_to_open_clip(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise UserFacingError(
            f"checkpoint {path} does not fit model {student_cfg['model']!r} (format {fmt}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            "Check `student.model` and `student.checkpoint_format`."
        )
    log.info("loaded %s weights from %s (%s format)", student_cfg["model"], path, fmt)
    return model.eval()


def save_clip(model, path: str | Path) -> None:
    """Save in open_clip layout (plain state dict), atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def tokenizer(student_cfg: dict):
    """The model's tokenizer (open_clip ships the BPE vocabulary; nothing is downloaded)."""
    import open_clip

    register_custom_config(student_cfg)
    return open_clip.get_tokenizer(student_cfg["model"])


def param_groups(model, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: decay on matrices; none on biases, norms, the
    temperature and other 0/1-d parameters (CLIP / open_clip practice, CLIPSelf code)."""
    decay, flat = [], []
    for p in model.parameters():
        if p.requires_grad:
            (flat if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": flat, "weight_decay": 0.0}]
