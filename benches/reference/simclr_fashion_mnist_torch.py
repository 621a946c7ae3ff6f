"""PyTorch reference for issue-17 parity: train the SimCLR recipe of a simclr definition with PyTorch.

    python -m venv .venv-torch && .venv-torch/bin/pip install torch torchvision pyyaml safetensors numpy
    .venv-torch/bin/python benches/reference/simclr_fashion_mnist_torch.py \
        --definition definitions/fashion-mnist.yaml --epochs 3 --out runs/torch-fashion-mnist
    simclr eval linear runs/torch-fashion-mnist      # the same probe that scores our runs
    simclr eval knn runs/torch-fashion-mnist

The recipe is read from the definition itself, so both sides train what one file says: the
`idx` source (path, split, limit, epochs; `--epochs` overrides), the `views` policy (`t` and
`t_prime`, mapped to torchvision transforms with the same names and parameters; a transform
this script does not know is an error, not skipped), `batch` size, the `resnet` encoder
(depth 18/34, width, `cifar` or `imagenet` stem, in_channels; parameters named exactly as
torchvision's ResNet so the weights load into simclr), the `projector` (mlp/linear/none, hidden,
out), and `nt_xent` (temperature, LARS or SGD, lr with `lr_scaling`, weight decay, 10% linear
warm-up then cosine, as stages/model/src/schedule.rs). Initialisation follows the same
distributions as simclr's (torchvision's: Kaiming normal fan-out for convolutions, torch.nn.Linear's
default for the head); the random streams differ, so the two runs are not bit-identical.

Data loading is the stack a PyTorch user runs: a torch Dataset of PIL images, torchvision
transforms, DataLoader(shuffle, drop_last, --workers processes), the model on --threads threads.

Writes OUT/checkpoints/step-N/{definition.yaml, state.json, encoder.safetensors, head.safetensors,
optimizer.safetensors}
in simclr's checkpoint layout (so `simclr eval` and `simclr export` read it), OUT/steps.jsonl
(step, loss, lr, elapsed seconds) and OUT/summary.json (steps, images, wall seconds of the
training loop and of the whole script, images per second).
"""
import argparse, copy, gzip, json, math, os, random, struct, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T


def fail(msg):
    sys.exit(f"simclr_fashion_mnist_torch: {msg}")


# ---------- data ----------

def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_images(params):
    path = params.get("path", "/usr/share/datasets/fashion-mnist")
    split = params.get("split", "train")
    prefix = {"train": "train", "test": "t10k"}[split]
    if os.path.isdir(path):
        names = [n for n in os.listdir(path) if n.startswith(prefix + "-images")]
        if not names:
            fail(f"no {prefix}-images file in {path}")
        path = os.path.join(path, sorted(names)[0])
    images = read_idx(path)
    limit = params.get("limit")
    return images[:limit] if limit else images


# ---------- the views policy, as torchvision transforms ----------

def pair(v, around=1.0):
    """simclr's `x or [min, max]` for jitter factors."""
    if v is None:
        return None
    return (max(0.0, around - v), around + v) if isinstance(v, (int, float)) else tuple(v)


class Solarize:
    def __init__(self, threshold=0.5, p=0.5):
        self.t = T.RandomSolarize(threshold * 255.0 if threshold <= 1.0 else threshold, p=p)

    def __call__(self, img):
        return self.t(img)


def transform(spec):
    """One policy entry (`name` or `{name: {params}}`) as a torchvision transform on PIL images."""
    if isinstance(spec, str):
        name, p = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        (name, p), = spec.items()
        p = p or {}
    else:
        fail(f"a policy entry must be a name or a one-key mapping, found {spec!r}")
    if name == "random_resized_crop":
        size = p["size"]
        return T.RandomResizedCrop(size if isinstance(size, int) else tuple(size),
                                   scale=tuple(p.get("scale", (0.08, 1.0))),
                                   ratio=tuple(p.get("ratio", (3 / 4, 4 / 3))), antialias=True)
    if name == "horizontal_flip":
        return T.RandomHorizontalFlip(p.get("p", 0.5))
    if name == "vertical_flip":
        return T.RandomVerticalFlip(p.get("p", 0.5))
    if name == "color_jitter":
        # torchvision's "off" is 0; simclr's is an absent key.
        kw = {k: pair(p[k]) for k in ("brightness", "contrast", "saturation") if p.get(k) is not None}
        if p.get("hue") is not None:
            hue = p["hue"]
            kw["hue"] = (-hue, hue) if isinstance(hue, (int, float)) else tuple(hue)
        return T.ColorJitter(**kw)
    if name == "random_grayscale":
        return T.RandomGrayscale(p.get("p", 0.1))
    if name == "gaussian_blur":
        if "kernel_size" not in p:
            fail("gaussian_blur: give `kernel_size` (kernel_fraction is not mapped)")
        return T.GaussianBlur(p["kernel_size"], sigma=tuple(p.get("sigma", (0.1, 2.0))))
    if name == "solarize":
        return Solarize(p.get("threshold", 0.5), p.get("p", 0.5))
    if name == "equalize":
        return T.RandomEqualize(p.get("p", 0.5))
    if name == "random_rotation":
        d = p["degrees"]
        return T.RandomRotation(d, fill=p.get("fill", 0))
    if name == "random_apply":
        return T.RandomApply([transform(t) for t in p.get("transforms", [])], p=p.get("p", 0.5))
    fail(f"transform `{name}` is not mapped to torchvision by this script")


def policy(entries):
    return T.Compose([transform(e) for e in entries] + [T.PILToTensor()])


class Pairs(torch.utils.data.Dataset):
    def __init__(self, images, t, t_prime):
        self.images, self.t, self.t_prime = images, t, t_prime

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return self.t(img), self.t_prime(img)


# ---------- the network, with torchvision's parameter names ----------

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision.models.resnet18/34 at base width w (stages w, 2w, 4w, 8w), no fc: h = pooled features."""

    def __init__(self, depth, width, stem, channels, zero_init_residual=False):
        super().__init__()
        blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}.get(depth) or fail(f"resnet depth {depth}: this script maps 18 and 34")
        self.imagenet = stem == "imagenet"
        self.conv1 = (nn.Conv2d(channels, width, 7, 2, 3, bias=False) if self.imagenet
                      else nn.Conv2d(channels, width, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for stage, n in enumerate(blocks):
            cout = width << stage
            layer = []
            for i in range(n):
                layer.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


def projector(params, dim):
    head = params.get("head", "mlp")
    out = params.get("out", 128)
    if params.get("batch_norm"):
        fail("projector batch_norm is not mapped by this script")
    if head == "none":
        return nn.Identity(), []
    if head == "linear":
        return nn.Sequential(nn.Linear(dim, out)), [("0", "head.0")]
    if head == "mlp":
        if params.get("layers", 2) != 2:
            fail("projector layers other than 2 are not mapped by this script")
        hidden = params.get("hidden") or dim
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out)), [("0", "head.0"), ("2", "head.1")]
    fail(f"projector head `{head}` is not mapped by this script")


# ---------- loss, optimizer, schedule (as stages/model/src/{loss,optim,schedule}.rs) ----------

def nt_xent(z, tau):
    """Views interleaved (2i, 2i+1 are a pair), 2N-2 negatives each, mean over the 2N views."""
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / tau
    sim.fill_diagonal_(float("-inf"))
    partner = torch.arange(z.shape[0]) ^ 1
    return F.cross_entropy(sim, partner)


# LARS (You et al. 2017) as SimCLR uses it and simclr implements it: weight decay and the trust
# ratio on weight matrices and kernels only, momentum with the rate folded into the buffer.
# One definition for both references: the step benchmark's.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_torch import Lars  # noqa: E402


def peak_lr(params, batch):
    sgd = params.get("optimizer", "lars") == "sgd"
    base = params.get("lr") or (0.06 if sgd else 0.3)
    scaling = params.get("lr_scaling") or "linear"
    return {"linear": base * batch / 256.0, "sqrt": base * math.sqrt(batch), "none": base}[scaling]


def lr_at(step, peak, warmup, total):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------- checkpoint in simclr's layout ----------

def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def stage_of(stages, kind):
    found = [(k, v) for k, v in stages.items() if v.get("kind") == kind]
    if len(found) != 1:
        fail(f"the definition needs exactly one `{kind}` stage, found {len(found)}")
    return found[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--definition", default="definitions/fashion-mnist.yaml")
    ap.add_argument("--epochs", type=int, help="override the source's epochs")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule keeps its length)")
    ap.add_argument("--out", required=True, help="run folder to write")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--seed", type=int, help="override the definition's seed")
    a = ap.parse_args()
    t_script = time.perf_counter()

    with open(a.definition) as f:
        definition = yaml.safe_load(f)
    definition = copy.deepcopy(definition)
    stages = definition["stages"]
    src_id, src = stage_of(stages, "idx")
    if a.epochs is not None:
        src.setdefault("params", {})["epochs"] = a.epochs
    _, views = stage_of(stages, "views")
    _, batcher = stage_of(stages, "batch")
    enc_id, enc = stage_of(stages, "resnet")
    head_id, head_stage = stage_of(stages, "projector")
    _, train = stage_of(stages, "nt_xent")
    sp, vp, bp, ep, hp, tp = (s.get("params", {}) or {} for s in (src, views, batcher, enc, head_stage, train))
    seed = a.seed if a.seed is not None else definition.get("seed", 0)
    definition["seed"] = seed

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.set_num_threads(a.threads)

    images = idx_images(sp)
    epochs = sp.get("epochs", 1)
    t = policy(vp["t"])
    t_prime = policy(vp.get("t_prime", vp["t"]))
    batch = bp.get("batch_size", 256)
    steps_per_epoch = len(images) // batch
    total = tp.get("total_steps") or steps_per_epoch * epochs
    warmup = tp.get("warmup_steps") or total // 10
    peak = peak_lr(tp, batch)
    tau = tp.get("temperature", 0.5)

    channels = ep.get("in_channels", 3)
    width = ep.get("width", 64)
    encoder = ResNet(ep.get("depth", 18), width, ep.get("stem", "cifar"), channels, ep.get("zero_init_residual", False))
    dim = 8 * width
    head, head_names = projector(hp, dim)
    params = list(encoder.parameters()) + list(head.parameters())
    opt_name = tp.get("optimizer", "lars")
    wd = tp.get("weight_decay") or (5e-4 if opt_name == "sgd" else 1e-6)
    if opt_name == "lars":
        opt = Lars(params, lr=peak, momentum=tp.get("momentum", 0.9), trust=tp.get("trust_coefficient", 0.001), weight_decay=wd)
    elif opt_name == "sgd":
        # Biases and BatchNorm parameters (1-D) without weight decay, as simclr's optimizers.
        opt = torch.optim.SGD([dict(params=[p for p in params if p.ndim > 1], weight_decay=wd),
                               dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0)],
                              lr=peak, momentum=tp.get("momentum", 0.9), nesterov=tp.get("nesterov", False))
    else:
        fail(f"optimizer `{opt_name}` is not mapped by this script")

    loader = torch.utils.data.DataLoader(
        Pairs(images, t, t_prime), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=a.workers, persistent_workers=a.workers > 0,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        generator=torch.Generator().manual_seed(seed))

    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "steps.jsonl"), "w")
    print(f"torch {torch.__version__}: ResNet-{ep.get('depth', 18)} width {width} ({ep.get('stem', 'cifar')} stem), "
          f"{len(images)} images x {epochs} epochs, batch {batch}, {total} steps, lr {peak:.4f}, tau {tau}, "
          f"{a.threads} threads + {a.workers} workers", flush=True)
    encoder.train()
    head.train()
    step, loss_value, lr = 0, float("nan"), 0.0
    t_train = time.perf_counter()
    done = False
    for epoch in range(epochs):
        for x1, x2 in loader:
            lr = lr_at(step, peak, warmup, total)
            for g in opt.param_groups:
                g["lr"] = lr
            # Interleave the views (x1[0], x2[0], x1[1], ...), as simclr's batches hold them.
            x = torch.stack((x1, x2), 1).flatten(0, 1).float().div_(255.0)
            loss = nt_xent(head(encoder(x)), tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                fail(f"the loss is {loss_value} at step {step}: training diverged")
            step += 1
            log.write(json.dumps(dict(step=step - 1, epoch=epoch, loss=loss_value, lr=lr,
                                      elapsed_seconds=time.perf_counter() - t_train)) + "\n")
            if step % 50 == 0:
                log.flush()
                print(f"step {step}/{total} loss {loss_value:.4f} lr {lr:.4f} "
                      f"{step * batch / (time.perf_counter() - t_train):.1f} images/s", flush=True)
            if step >= total or (a.max_steps and step >= a.max_steps):
                done = True
                break
        if done:
            break
    train_seconds = time.perf_counter() - t_train
    log.close()

    # The checkpoint, in simclr's layout.
    ckpt = os.path.join(a.out, "checkpoints", f"step-{step:08d}")
    os.makedirs(ckpt, exist_ok=True)
    text = yaml.safe_dump(definition, sort_keys=False)
    with open(os.path.join(ckpt, "definition.yaml"), "w") as f:
        f.write(text)
    enc_tensors = {k: v.detach().contiguous().float() for k, v in encoder.state_dict().items()
                   if not k.endswith("num_batches_tracked")}
    save_file(enc_tensors, os.path.join(ckpt, "encoder.safetensors"))
    groups = [dict(stage=enc_id, role="encoder", kind="resnet",
                   spec=dict(depth=ep.get("depth", 18), in_channels=channels, stem=ep.get("stem", "cifar"),
                             width=width, zero_init_residual=ep.get("zero_init_residual", False)),
                   file="encoder.safetensors")]
    if head_names:
        head_tensors = {}
        for k, v in head.state_dict().items():
            idx, rest = k.split(".", 1)
            head_tensors[dict(head_names)[idx] + "." + rest] = v.detach().contiguous().float()
        save_file(head_tensors, os.path.join(ckpt, "head.safetensors"))
        groups.append(dict(stage=head_id, role="projector", kind="projector",
                           spec=dict(batch_norm=False, head=hp.get("head", "mlp"), hidden=hp.get("hidden"),
                                     input=dim, layers=hp.get("layers", 2), out=hp.get("out", 128)),
                           file="head.safetensors"))
    # The optimizer's buffers under simclr's names (`<stage>.<param>.momentum`): a checkpoint
    # holds them, and simclr's LARS folds the rate into its buffer as this one does.
    buffers = {}
    for prefix, module, rename in ((enc_id, encoder, None), (head_id, head, dict(head_names))):
        for name, param in module.named_parameters():
            st = opt.state.get(param, {})
            buf = st.get("momentum", st.get("momentum_buffer"))
            if buf is None:
                buf = torch.zeros_like(param)
            if rename:
                idx, rest = name.split(".", 1)
                name = rename[idx] + "." + rest
            buffers[f"{prefix}.{name}.momentum"] = buf.detach().contiguous().float()
    save_file(buffers, os.path.join(ckpt, "optimizer.safetensors"))
    crop = next((e["random_resized_crop"]["size"] for e in vp["t"] if isinstance(e, dict) and "random_resized_crop" in e), None)
    norm = next((e["normalize"] for e in vp["t"] if isinstance(e, dict) and "normalize" in e), None)
    state = dict(format=1, steps=step, epoch=epoch, position=0, seed=seed, total_steps=total, loss=loss_value, lr=lr,
                 optimizer=opt_name, definition_hash=fnv1a(text), groups=groups,
                 preprocessing=dict(size=None if crop is None else ([crop, crop] if isinstance(crop, int) else list(crop)),
                                    normalize=norm))
    with open(os.path.join(ckpt, "state.json"), "w") as f:
        json.dump(state, f, indent=2)
    with open(os.path.join(a.out, "checkpoints", "latest"), "w") as f:
        f.write(os.path.basename(ckpt) + "\n")
    summary = dict(framework=f"torch {torch.__version__}", steps=step, images=step * batch, final_loss=loss_value,
                   train_seconds=train_seconds, script_seconds=time.perf_counter() - t_script,
                   images_per_s=step * batch / train_seconds, threads=a.threads, workers=a.workers, checkpoint=ckpt)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
