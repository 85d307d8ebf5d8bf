"""Torch architectures of the shipped models (no torchvision: it does not load beside our torch).

Both networks are deliberately small: the platform grades up to 20 leaves x 5 diseases per
photo on CPU, so the graders dominate inference cost and must stay a few MFLOPs each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class DecodedBoxes:
    """Per image: boxes (k, 4) as x0, y0, x1, y1 in input pixels, and scores (k,) in [0, 1]."""

    boxes: list[torch.Tensor]
    scores: list[torch.Tensor]


class LeafDetector(nn.Module):
    """CenterNet-style anchor-free detector with a stride-4 output.

    A small encoder goes down to stride 16 (receptive field large enough for a 70 px leaf)
    and a U-Net style decoder comes back to stride 4, where three 1x1 heads predict the
    centre heat-map (logits), the box size (w, h in input pixels / `size_scale`) and the
    sub-cell centre offset (in output cells).
    """

    stride = 4

    def __init__(
        self,
        width: int = 24,
        input_size: int = 256,
        max_detections: int = 20,
        score_threshold: float = 0.3,
        size_scale: float = 64.0,
    ) -> None:
        super().__init__()
        w = width
        self.input_size = input_size
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.size_scale = size_scale
        self.stem = nn.Sequential(_conv(3, w // 2, stride=2), _conv(w // 2, w, stride=2))  # /4
        self.enc8 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))  # /8
        self.enc16 = nn.Sequential(_conv(2 * w, 3 * w, stride=2), _conv(3 * w, 3 * w))  # /16
        self.lat8 = _conv(3 * w + 2 * w, 2 * w, kernel=3)
        self.lat4 = _conv(2 * w + w, w, kernel=3)
        self.refine = _conv(w, w)
        self.heatmap = nn.Conv2d(w, 1, 1)
        self.size = nn.Conv2d(w, 2, 1)
        self.offset = nn.Conv2d(w, 2, 1)
        # Focal-loss prior: start with a low centre probability everywhere so that the
        # early loss is not dominated by the ~4000 background cells per image.
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, 3, H, W) float in [0, 1]. Returns heat-map logits, sizes, offsets at H/4."""
        x = (x - 0.5) / 0.25
        f4 = self.stem(x)
        f8 = self.enc8(f4)
        f16 = self.enc16(f8)
        up8 = F.interpolate(f16, scale_factor=2.0, mode="nearest")
        d8 = self.lat8(torch.cat([up8, f8], dim=1))
        up4 = F.interpolate(d8, scale_factor=2.0, mode="nearest")
        d4 = self.refine(self.lat4(torch.cat([up4, f4], dim=1)))
        return self.heatmap(d4), self.size(d4), self.offset(d4)

    @torch.no_grad()
    def decode(
        self,
        heat_logits: torch.Tensor,
        size: torch.Tensor,
        offset: torch.Tensor,
        score_threshold: float | None = None,
    ) -> DecodedBoxes:
        """3x3 max-pool NMS on the heat-map, top-k, score threshold; boxes in input pixels."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        heat = torch.sigmoid(heat_logits)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        n, _, h, w = heat.shape
        k = min(self.max_detections, h * w)
        top_scores, top_idx = peaks.view(n, -1).topk(k, dim=1)
        ys = torch.div(top_idx, w, rounding_mode="floor")
        xs = top_idx % w
        boxes: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        for i in range(n):
            keep = top_scores[i] >= threshold
            yi, xi = ys[i][keep], xs[i][keep]
            off = offset[i, :, yi, xi]
            wh = size[i, :, yi, xi].clamp(min=0) * self.size_scale
            cx = (xi.float() + off[0]) * self.stride
            cy = (yi.float() + off[1]) * self.stride
            boxes.append(
                torch.stack([cx - wh[0] / 2, cy - wh[1] / 2, cx + wh[0] / 2, cy + wh[1] / 2], 1)
            )
            scores.append(top_scores[i][keep])
        return DecodedBoxes(boxes, scores)


class DiseaseGrader(nn.Module):
    """Small CNN that grades one disease on one leaf crop resized to `input_size`.

    Returns logits over `num_grades` classes; softmax gives the confidence.
    """

    def __init__(self, input_size: int = 48, num_grades: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width
        self.input_size = input_size
        self.num_grades = num_grades
        self.features = nn.Sequential(
            _conv(3, w, stride=2, kernel=5),  # 24x24: keeps small spots visible
            _conv(w, w * 3 // 2),
            nn.MaxPool2d(2),  # 12x12
            _conv(w * 3 // 2, 3 * w),
            nn.MaxPool2d(2),  # 6x6
            _conv(3 * w, 4 * w),
        )
        # Mean and max pooling together: severity is "how much lesion" (mean) while the
        # presence of a single spot is easier to see in the max.
        self.classifier = nn.Linear(8 * w, num_grades)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, S, S) float in [0, 1]. Returns (N, num_grades) logits."""
        f = self.features((x - 0.5) / 0.25)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.classifier(pooled)
