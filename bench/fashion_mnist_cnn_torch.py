"""The fashion_mnist_cnn example (examples/fashion_mnist_cnn.cc) in PyTorch, for time-to-accuracy
beside Kiln's: the same model (two conv 3x3 + batch norm + ReLU + max-pool blocks, dropout 0.25,
FC 128, dropout 0.25, FC 10; PyTorch's default initialization, which Kiln's layers follow), the
same data scaling (pixels / 255), batch 64 shuffled each epoch, Adam at 2e-3 with a cosine
schedule to 1e-5 over every step, softmax cross-entropy. After each epoch it evaluates the 10,000
test images and prints one line:

    epoch E test_accuracy A seconds S      (S: wall time since before the data was loaded,
                                            evaluations included, as bench/time_to_accuracy.sh
                                            times Kiln)

    python bench/fashion_mnist_cnn_torch.py [--data DIR] [--epochs N] [--threads N] [--seed N]
"""
import argparse
import gzip
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load(directory, prefix):
    with gzip.open(f"{directory}/{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{directory}/{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return (torch.from_numpy(images.astype(np.float32) / 255),
            torch.from_numpy(labels.astype(np.int64)))


def model():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Dropout(0.25),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
                         nn.Linear(128, 10))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train_x, train_y = load(args.data, "train")
    test_x, test_y = load(args.data, "t10k")
    net = model()
    steps = args.epochs * math.ceil(len(train_x) / args.batch)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=args.lr / 200)
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), args.batch):
            batch = order[i:i + args.batch]
            loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            correct = sum((net(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
                          for i in range(0, len(test_x), 1000))
        print(f"epoch {epoch} test_accuracy {correct / len(test_x):.4f} seconds {time.perf_counter() - start:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
