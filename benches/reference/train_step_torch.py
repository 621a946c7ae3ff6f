"""PyTorch reference for `simclr bench train`: the same SimCLR training step, timed the same way.

    pip install torch
    python benches/reference/train_step_torch.py [--widths 16,64] [--pairs 128] [--steps 2] [--threads 2]
                                                 [--stem cifar|imagenet] [--device cpu|cuda] [--tf32]

ResNet-18 with the CIFAR stem (3x3 stride 1, no max-pool) or the ImageNet stem (7x7 stride 2, then
a 3x3 stride-2 max-pool) at base width w (stages w, 2w, 4w, 8w,
BasicBlocks as torchvision), BatchNorm in training mode, MLP head (8w -> 8w -> 128), NT-Xent
(tau 0.5) over 2N views, LARS (momentum 0.9, trust 0.001, weight decay 1e-6; biases and BatchNorm
parameters excluded), fp32 on the CPU (or CUDA: strict fp32, or TF32 in matrix products and
convolutions with --tf32; timed with device synchronisation). For each width and input (32x32x3, 28x28x1) one warm-up
step, then the mean of --steps steps split into forward (through the loss), backward and
optimizer. Prints one JSON object per configuration per line, with the keys the Rust bench uses.
"""
import argparse, json, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, width, channels, stem="cifar"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage in range(4):
            cout = width << stage
            for i in range(2):
                layers.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.pool(F.relu(self.bn1(self.conv1(x))))).mean((2, 3))


def nt_xent(z, tau):
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / tau
    sim.fill_diagonal_(-1e9)
    partner = torch.arange(z.shape[0], device=z.device) ^ 1
    return F.cross_entropy(sim, partner)


class Lars(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.9, trust=0.001, weight_decay=1e-6):
        super().__init__(params, dict(lr=lr, momentum=momentum, trust=trust, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d + g["weight_decay"] * p
                    wn, gn = p.norm(), d.norm()
                    ratio = torch.where((wn > 0) & (gn > 0), g["trust"] * wn / gn, torch.ones_like(wn))
                    d = d * ratio
                buf = self.state[p].get("momentum")
                buf = d * g["lr"] if buf is None else buf.mul_(g["momentum"]).add_(d, alpha=g["lr"])
                self.state[p]["momentum"] = buf
                p.sub_(buf)


def measure(width, stem, channels, size, pairs, steps, device):
    torch.manual_seed(0)
    enc = ResNet18(width, channels, stem).to(device)
    dim = 8 * width
    head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128)).to(device)
    opt = Lars(list(enc.parameters()) + list(head.parameters()), lr=0.1)
    x = torch.randn(2 * pairs, channels, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fwd = bwd = step = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = nt_xent(head(enc(x)), 0.5)
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if i > 0:
            fwd, bwd, step = fwd + t1 - t0, bwd + t2 - t1, step + t3 - t2
    total = (fwd + bwd + step) / steps
    return dict(width=width, channels=channels, size=size, pairs=pairs,
                forward_ms=1e3 * fwd / steps, backward_ms=1e3 * bwd / steps, optimizer_ms=1e3 * step / steps,
                ms_per_step=1e3 * total, views_per_s=2 * pairs / total,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--widths", default="16,64")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="TF32 in CUDA matmuls and convolutions")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # Strict fp32 unless asked: PyTorch allows TF32 in cuDNN convolutions by default.
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = False
    device = torch.device(a.device)
    for w in [int(v) for v in a.widths.split(",")]:
        for channels, size in [(3, 32), (1, 28)]:
            print(json.dumps(measure(w, a.stem, channels, size, a.pairs, a.steps, device)), flush=True)


if __name__ == "__main__":
    main()
