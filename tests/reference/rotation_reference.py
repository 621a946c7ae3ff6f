"""Reference values for stages/augment/tests/torchvision_parity.rs (random_rotation).

torchvision's own rotation of a small deterministic image: `F.rotate` on a float tensor
(expand=False, image centre), nearest and bilinear, with a fill. Run with torch and
torchvision installed: python tests/reference/rotation_reference.py
"""
import math

import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

C, H, W = 3, 5, 7


def image():
    return torch.tensor(
        [[[0.5 + 0.5 * math.sin(1.7 * c + 0.9 * y + 0.37 * x * (y + 1)) for x in range(W)] for y in range(H)] for c in range(C)],
        dtype=torch.float32,
    )


CASES = [
    ("nearest", 30.0, [0.0]),
    ("nearest", -47.5, [0.2, 0.5, 0.8]),
    ("bilinear", 30.0, [0.25]),
    ("bilinear", 101.0, [0.0]),
]

print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}")
for mode, angle, fill in CASES:
    interp = InterpolationMode.NEAREST if mode == "nearest" else InterpolationMode.BILINEAR
    out = F.rotate(image(), angle, interpolation=interp, expand=False, fill=fill)
    vals = ", ".join(f"{v:.7}" for v in out.flatten().tolist())
    print(f"({mode!r}, {angle}, {fill}): [{vals}]")
