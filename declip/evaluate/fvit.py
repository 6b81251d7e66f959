"""An F-ViT-style open-vocabulary detector from torchvision's detection components (protocols.md section 3).

Reference: CLIPSelf F-ViT (`F-ViT/models/fvit.py`, `fvit_head.py`, `custom_losses.py`,
`configs/ov_coco/fvit_vitb16_upsample_fpn_bs64_3e_ovcoco_eva_original.py`, `configs/ov_lvis/...`):
- the CLIP image tower is frozen; its dense map feeds a feature pyramid (OUR CHOICE, as the issue asks:
  a ViTDet "simple" pyramid built from the last dense map; F-ViT feeds an FPN with four intermediate
  layers) and is also the "VLM" map whose RoIAlign 1x1 box feature scores boxes open-vocabulary;
- RPN (torchvision RegionProposalNetwork; anchors of 8 strides per level, ratios 0.5/1/2; 2 convs);
- RoI head: RoIAlign 7x7 on the pyramid, 4 shared convs + 2 shared FCs, a class FC whose output is
  cosine-compared with the class text embeddings (background last in F-ViT, first here as torchvision
  numbers labels) times a learned temperature (init 50), and a class-agnostic box regression FC;
- training on base classes: novel logits are masked to -inf and their class weight is 0, background has
  weight `bg_weight` (0.2 on OV-COCO); loss = sum of weighted CE / number of sampled RoIs (mmdet reduction);
- test (`fvit_head.py` FViTBBoxHead.forward): p = softmax(learned logits), v = softmax(vlm_temperature *
  cos(RoIAlign_1x1(dense map), text)); base classes and background get p^(1-alpha) v^alpha, novel classes
  p^(1-beta) v^beta; then per-class NMS (mmdet multiclass_nms) over the non-background scores.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("p2", "p3", "p4", "p5")  # strides 4, 8, 16, 32 (F-ViT featmap_strides); "pool" = stride 64 for the RPN


class SimpleFPN(nn.Module):
    """ViTDet simple feature pyramid: strides 4/8/16/32 from one dense map; the scale factors are powers of
    two nearest to patch / stride (x4, x2, x1, x0.5 for patch 14 or 16; x2, x1, x0.5, x0.25 for patch 8)."""

    def __init__(self, in_channels: int, out_channels: int, in_stride: int):
        super().__init__()
        self.scales = [2.0 ** round(math.log2(in_stride / s)) for s in (4, 8, 16, 32)]
        self.stages = nn.ModuleList()
        for scale in self.scales:
            layers, dim = [], in_channels
            if scale == 4:
                layers += [nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.GroupNorm(1, dim // 2), nn.GELU(),
                           nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                dim //= 4
            elif scale == 2:
                layers += [nn.ConvTranspose2d(dim, dim // 2, 2, 2)]
                dim //= 2
            elif scale == 0.5:
                layers += [nn.MaxPool2d(2, 2)]
            elif scale == 0.25:
                layers += [nn.MaxPool2d(4, 4)]
            elif scale != 1:
                raise ValueError(f"no simple-pyramid stage for a scale of {scale} (patch stride {in_stride})")
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), nn.GroupNorm(1, out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.GroupNorm(1, out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x) -> OrderedDict:
        out = OrderedDict((name, stage(x)) for name, stage in zip(LEVELS, self.stages))
        out["pool"] = F.max_pool2d(out["p5"], 1, 2)  # torchvision LastLevelMaxPool: the RPN's stride-64 level
        return out


class CosineBoxPredictor(nn.Module):
    """F-ViT FViTBBoxHead after the shared layers: cosine class scores x learned temperature, agnostic box."""

    def __init__(self, fc_dim: int, class_embed: torch.Tensor, temperature: float):
        super().__init__()
        self.cls_fc = nn.Linear(fc_dim, class_embed.shape[1])
        self.reg_fc = nn.Linear(fc_dim, fc_dim)
        self.fc_reg = nn.Linear(fc_dim, 4)
        self.register_buffer("class_embed", F.normalize(class_embed.float(), dim=-1))  # (1 + K, C), row 0 = bg
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def forward(self, x):
        cls = F.normalize(F.relu(self.cls_fc(x)), dim=-1)
        logits = cls @ self.class_embed.T * self.temperature
        return logits, self.fc_reg(F.relu(self.reg_fc(x)))


def weighted_ce(logits, labels, class_weight):
    """F-ViT custom_losses.cross_entropy: zero-weight classes masked to -inf, weighted CE summed / N."""
    masked = logits.masked_fill((class_weight < 1e-5)[None], float("-inf"))
    ce = F.cross_entropy(masked, labels, weight=class_weight, reduction="none")
    return ce.sum() / max(labels.numel(), 1)


def ensemble_scores(learned_logits, vlm_logits, novel, alpha: float, beta: float):
    """F-ViT test-time rule: p^(1-a) v^a on base classes and background, p^(1-b) v^b on novel classes."""
    p, v = learned_logits.softmax(-1), vlm_logits.softmax(-1)
    w = torch.where(novel, torch.tensor(beta, device=p.device), torch.tensor(alpha, device=p.device))
    return p.pow(1 - w) * v.pow(w)


def vlm_box_features(content, boxes: list, stride: float):
    """RoIAlign 1x1 of the dense map per box, L2-normalised (F-ViT vlm_roi_extractor: torchvision
    roi_align, output 1, sampling_ratio 0 = adaptive, not aligned)."""
    from torchvision.ops import roi_align

    feats = roi_align(content.float(), [b.float() for b in boxes], output_size=1, spatial_scale=1.0 / stride,
                      sampling_ratio=0, aligned=False)
    return F.normalize(feats.flatten(1), dim=-1)


class FViT(nn.Module):
    """Frozen DenseCLIP + simple pyramid + RPN + cosine RoI head. Images come in letterboxed to size x size."""

    def __init__(self, dense, class_embed: torch.Tensor, novel: torch.Tensor, s: dict):
        super().__init__()
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
        from torchvision.ops import MultiScaleRoIAlign
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

        self.dense = dense.eval()
        for p in self.dense.parameters():
            p.requires_grad_(False)
        self.stride = dense.patch_size
        ch, fc = s["fpn_channels"], s["fc_channels"]
        self.fpn = SimpleFPN(class_embed.shape[1], ch, self.stride)
        # Anchors of anchor_scale x the level stride, ratios 0.5/1/2 (F-ViT AnchorGenerator; strides 4..64, or
        # 3.5..56 for patch 14). torchvision places anchor centres on integer strides (image // feature size).
        strides = [self.stride / sc for sc in self.fpn.scales] + [2 * self.stride / self.fpn.scales[-1]]
        anchors = AnchorGenerator(tuple((s["anchor_scale"] * st,) for st in strides), ((0.5, 1.0, 2.0),) * len(strides))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(ch, 3, conv_depth=2), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5, pre_nms_top_n={"training": s["rpn_pre_nms"], "testing": s["rpn_pre_nms"]},
            post_nms_top_n={"training": s["rpn_post_nms"], "testing": s["rpn_post_nms"]}, nms_thresh=0.7)
        head = FastRCNNConvFCHead((ch, 7, 7), [ch] * 4, [fc, fc], norm_layer=nn.BatchNorm2d)
        predictor = CosineBoxPredictor(fc, class_embed, s["learned_temperature"])
        # RoIHeads for its training-sample selection (gt added as proposals, IoU 0.5 matcher, 25% positives)
        # and its box coder (target stds 0.1, 0.1, 0.2, 0.2 = weights 10, 10, 5, 5).
        self.roi_heads = RoIHeads(MultiScaleRoIAlign(list(LEVELS), 7, sampling_ratio=0), head, predictor,
                                  0.5, 0.5, s["roi_batch"], 0.25, (10.0, 10.0, 5.0, 5.0),
                                  s["score_thr"], s["nms"], s["max_per_img"])
        weight = torch.where(novel, 0.0, 1.0)
        self.register_buffer("novel", torch.cat([torch.zeros(1, dtype=torch.bool), novel]))  # bg first
        self.register_buffer("class_weight", torch.cat([torch.tensor([s["bg_weight"]]), weight]))
        self.settings = dict(s)

    def trainable_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("dense.")}

    def _features(self, images):
        with torch.no_grad():
            content = self.dense(images).content.float()
        return content, self.fpn(content)

    def forward(self, images, targets=None):
        """Training: dict of losses; test: list of {boxes (x1y1x2y2, letterbox pixels), scores, labels (1..K)}."""
        from torchvision.models.detection.image_list import ImageList

        content, feats = self._features(images)
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        image_list = ImageList(images, sizes)
        proposals, rpn_losses = self.rpn(image_list, feats, targets)
        rh = self.roi_heads
        if self.training:
            proposals, _, labels, reg_targets = rh.select_training_samples(proposals, targets)
        x = rh.box_head(rh.box_roi_pool(feats, proposals, sizes))
        logits, deltas = rh.box_predictor(x)
        if self.training:
            labels, reg_targets = torch.cat(labels), torch.cat(reg_targets)
            pos = labels > 0
            loss_box = F.l1_loss(deltas[pos], reg_targets[pos], reduction="sum") / max(labels.numel(), 1)
            return {**rpn_losses, "loss_classifier": weighted_ce(logits, labels, self.class_weight),
                    "loss_box_reg": loss_box}
        vlm = vlm_box_features(content, proposals, self.stride) @ rh.box_predictor.class_embed.T
        s = self.settings
        scores = ensemble_scores(logits, vlm * s["vlm_temperature"], self.novel, s["alpha"], s["beta"])
        boxes = rh.box_coder.decode(deltas, proposals)[:, 0]
        return postprocess(boxes, scores, [len(p) for p in proposals], sizes, s)


def postprocess(boxes, scores, counts: list[int], sizes, s: dict) -> list[dict]:
    """mmdet multiclass_nms per image: every (box, non-background class) above score_thr, per-class NMS,
    the top max_per_img by score."""
    from torchvision.ops import batched_nms, clip_boxes_to_image

    out = []
    for b, sc, size in zip(boxes.split(counts), scores.split(counts), sizes):
        b = clip_boxes_to_image(b, size)
        k = sc.shape[1] - 1
        cand_scores = sc[:, 1:].reshape(-1)
        cand_boxes = b[:, None].expand(-1, k, 4).reshape(-1, 4)
        cand_labels = torch.arange(1, k + 1, device=b.device).repeat(len(b))
        keep = cand_scores > s["score_thr"]
        cand_boxes, cand_scores, cand_labels = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
        keep = batched_nms(cand_boxes, cand_scores, cand_labels, s["nms"])[: s["max_per_img"]]
        out.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": cand_labels[keep]})
    return out
