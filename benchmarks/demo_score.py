"""How recognisable are the demo's samples? A classifier trained on the real demo data labels
generated samples; the score is the fraction it labels as the class they were drawn for.

The demo's 10 classes are shape x colour (e.g. red circle, red cross, red ring), so colour
alone gets at most about a third of them right: a high score needs the shapes.

    python benchmarks/demo_score.py --data data/demo --npz samples/demo/samples.npz

Steps: train a small CNN on 90% of the real images (flips and 90-degree rotations keep every
demo class, so they augment), report its accuracy on the held-out 10%, then classify the
npz's images (x uint8 [N, R, R, 3], y int64 [N], as sample.py --sample_npz writes them) and
report the fraction whose predicted class equals the stored label, per class and overall.
The classifier is cached beside the data (<data>_classifier.pt) so later scores are quick.

With --feature_metrics, also FID, KID and precision/recall of the samples against every real
image of --data, on the classifier's 128-d penultimate features: a feature space trained on
this data, for machines without the Inception weights (these numbers compare runs on the demo
data with each other, not with published FIDs).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import datasets  # noqa: E402
import metrics  # noqa: E402


def classifier(n_classes: int) -> nn.Module:
    """A small VGG-style CNN for 32x32 images."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))


def load_folder(root: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of the (32x32) demo folder as floats in [-1, 1], with labels."""
    ds = datasets.ImageFolderDataset(root, 32)
    x = torch.stack([datasets.to_float(ds.image(i)) for i in range(len(ds))])
    return x, torch.as_tensor(ds.labels), ds.classes


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random flips and quarter turns, per batch (every demo shape stays itself)."""
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(4, ())), dims=(2, 3))


def train_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int,
                     seed: int) -> tuple[nn.Module, float]:
    """(classifier trained on 90% of the images, its accuracy on the other 10%)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    test, train = perm[:len(x) // 10], perm[len(x) // 10:]
    net = classifier(n_classes)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    steps = epochs * (len(train) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps)
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(augment(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval(), accuracy(net.eval(), x[test], y[test])


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes, in batches."""
    return torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images classified as their label."""
    return float((predict(net, x) == y).float().mean())


def features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's penultimate features (after pooling, before the last linear), float64."""
    body = net[:-1]
    with torch.no_grad():
        return torch.cat([body(x[i:i + 500]) for i in range(0, len(x), 500)]).double()


def feature_metrics(net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict:
    """FID, KID (mean, std) and precision/recall of fake against real images."""
    f_real, f_fake = features(net, real), features(net, fake)
    fid = metrics.torch_calculate_frechet_distance(
        f_real.mean(0), torch.cov(f_real.T), f_fake.mean(0), torch.cov(f_fake.T))
    kid_mean, kid_std = metrics.kernel_inception_distance(f_real, f_fake)
    precision, recall = metrics.precision_recall(f_real, f_fake)
    return {'FID': float(fid), 'KID_mean': kid_mean, 'KID_std': kid_std,
            'precision': precision, 'recall': recall}


def load_npz(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """sample.py's npz as floats in [-1, 1] [N, 3, R, R] and int64 labels [N]."""
    with np.load(path) as f:
        x, y = f['x'], f['y']
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(y)


def main(argv: list[str] | None = None) -> dict:
    """Train (or load) the classifier, score the npz, print and return the figures."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--data', default='data/demo', help='the demo image folder')
    p.add_argument('--npz', required=True, help='samples.npz written by sample.py --sample_npz')
    p.add_argument('--epochs', type=int, default=6, help='classifier training epochs')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default='', help='also write the figures to this JSON file')
    p.add_argument('--feature_metrics', action='store_true',
                   help='also FID/KID/precision/recall against --data on the classifier\'s '
                   'features')
    args = p.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    cache = Path(f"{args.data.rstrip('/')}_classifier.pt")
    x, y, classes = load_folder(args.data)
    net = classifier(len(classes))
    if cache.exists():
        saved = torch.load(cache, map_location='cpu')
        net.load_state_dict(saved['state']), net.eval()
        real_acc = saved['held_out_accuracy']
        print(f'classifier: {cache} (held-out accuracy on real images {real_acc:.3f})')
    else:
        start = time.perf_counter()
        net, real_acc = train_classifier(x, y, len(classes), args.epochs, args.seed)
        torch.save({'state': net.state_dict(), 'held_out_accuracy': real_acc}, cache)
        print(f'classifier: trained in {time.perf_counter() - start:.0f} s, held-out accuracy '
              f'on real images {real_acc:.3f} (saved to {cache})')
    xs, ys = load_npz(args.npz)
    pred = predict(net, xs)
    per_class = {c: float((pred[ys == i] == i).float().mean()) for i, c in enumerate(classes)
                 if (ys == i).any()}
    score = float((pred == ys).float().mean())
    for c, v in per_class.items():
        print(f'  {c:24s} {v:.3f}')
    print(f'demo score: {score:.3f} of {len(ys)} samples are classified as their class')
    result = {'score': score, 'num_samples': len(ys), 'per_class': per_class,
              'held_out_real_accuracy': real_acc, 'npz': args.npz}
    if args.feature_metrics:
        result.update(feature_metrics(net.eval(), x, xs))
        print('classifier features: FID {FID:.3f}, KID {KID_mean:.5f} +/- {KID_std:.5f}, '
              'precision {precision:.3f}, recall {recall:.3f}'.format(**result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
