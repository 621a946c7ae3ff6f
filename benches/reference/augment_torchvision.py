"""torchvision reference for `simclr bench augment`: the same four suites, PIL path,
DataLoader with 2 workers, pairs (two views) per second.

    pip install torch torchvision pillow numpy
    python benches/reference/augment_torchvision.py [--images DIR] [--packed DIR] [--seconds 10]

Suite (a) uses 28x28 gray images, (b) 32x32 RGB, (c) ~500x375 JPEG files decoded per pair
(a folder given with --images, else generated photo-sized JPEGs), (d) the same photos packed
(longer side 256, JPEG q90: the folder `simclr bench augment` writes, given with --packed).
`c_pil` and `d_pil` blur with PIL's ImageFilter.GaussianBlur (radius = sigma, as lightly
does) instead of torchvision's GaussianBlur(23). `simclr bench augment --reference python3`
runs this on its own files.
"""
import argparse, io, os, random, time

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T


class Pairs(Dataset):
    def __init__(self, items, policy, decode):
        self.items, self.policy, self.decode = items, policy, decode

    def __len__(self):
        return 10**9

    def __getitem__(self, i):
        item = self.items[i % len(self.items)]
        img = Image.open(io.BytesIO(item)).convert("RGB") if self.decode else item
        return self.policy(img), self.policy(img)


class PilBlur:
    """lightly's GaussianBlur: PIL's ImageFilter.GaussianBlur with radius = sigma."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def jpegs_in(folder):
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg")))[:256]
    return [open(os.path.join(folder, f), "rb").read() for f in files]


def photo_policy(blur):
    return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                      T.RandomApply([blur], p=0.5), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def photos(n):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:375, 0:500]
        a, b = rng.uniform(0, 6.28), rng.uniform(0.02, 0.06)
        img = np.stack([128 + 100 * np.sin(x * b + a), 128 + 90 * np.cos(y * b * 1.3 + a), 60 + 0.3 * y], -1)
        img = np.clip(img + rng.uniform(-12, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(dataset, seconds):
    loader = DataLoader(dataset, batch_size=64, num_workers=2)
    it = iter(loader)
    next(it)
    start, n = time.time(), 0
    while time.time() - start < seconds:
        a, _ = next(it)
        n += a.shape[0]
    return n / (time.time() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images")
    p.add_argument("--packed")
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    gray = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L") for _ in range(512)]
    rgb = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB") for _ in range(512)]
    jpegs = jpegs_in(args.images) if args.images else photos(24)
    packed = jpegs_in(args.packed) if args.packed else None
    a = T.Compose([T.RandomResizedCrop(28, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                   T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8), T.ToTensor()])
    b = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(),
                   T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2), T.ToTensor(),
                   T.Normalize([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261])])
    c = photo_policy(T.GaussianBlur(23, sigma=(0.1, 2.0)))
    c_pil = photo_policy(PilBlur((0.1, 2.0)))
    suites = [("a", Pairs(gray, a, False)), ("b", Pairs(rgb, b, False)), ("c", Pairs(jpegs, c, True)),
              ("c_pil", Pairs(jpegs, c_pil, True))]
    if packed:
        suites += [("d", Pairs(packed, c, True)), ("d_pil", Pairs(packed, c_pil, True))]
    for key, ds in suites:
        print(f"{key} {rate(ds, args.seconds):.0f} pairs/s", flush=True)


if __name__ == "__main__":
    main()
