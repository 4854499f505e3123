"""Reference architectures.

All are plain ``nn.Module`` s with one ``nn.ReLU`` module per use (no reuse, no in-place),
so every method, hook and rule sees each non-linearity separately. Every model takes the
input shape ``(C, H, W)`` and the number of classes, and records both as attributes.
The last layer is always called ``output``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def _flat_dim(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class _Described(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)


class PaperCNN(_Described):
    """The sanity-checks CNN: conv5x5-32, maxpool2, conv5x5-64, maxpool2, fc1024, fc(classes), ReLU.

    adebayo2018, appendix B ("SAME" padding as in the TensorFlow original).
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes=10):
        super().__init__(input_shape, num_classes)
        c = self.input_shape[0]
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(c, 32, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ]))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(_flat_dim(self.features, self.input_shape), 1024)
        self.relu3 = nn.ReLU()
        self.output = nn.Linear(1024, self.num_classes)

    def forward(self, x):
        return self.output(self.relu3(self.fc1(self.flatten(self.features(x)))))


class MLP(_Described):
    """The sanity-checks MLP: fully connected 2500-1500-500-(classes), ReLU (adebayo2018, appendix B)."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, hidden=(2500, 1500, 500)):
        super().__init__(input_shape, num_classes)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = int(torch.tensor(self.input_shape).prod())
        for i, h in enumerate(hidden, 1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append(("output", nn.Linear(width, self.num_classes)))
        self.net = nn.Sequential(OrderedDict(layers))

    def forward(self, x):
        return self.net(x)


class AlexNet1(_Described):
    """AlexNet-style net for one-channel 28x28 inputs (the competition paper's MNIST AlexNet).

    Five convolutions (5x5, 5x5, 3x3, 3x3, 3x3) with max-pooling after the 1st, 2nd and 5th,
    then dropout and three fully connected layers, as AlexNet; widths scaled down for 28x28.
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, widths=(32, 64, 96, 96, 64), hidden=512,
                 dropout=0.5):
        super().__init__(input_shape, num_classes)
        c = self.input_shape[0]
        w1, w2, w3, w4, w5 = widths
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(c, w1, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(w1, w2, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(w2, w3, 3, padding=1)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(w3, w4, 3, padding=1)), ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(w4, w5, 3, padding=1)), ("relu5", nn.ReLU()), ("pool3", nn.MaxPool2d(2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("drop1", nn.Dropout(dropout)),
            ("fc1", nn.Linear(_flat_dim(self.features, self.input_shape), hidden)), ("relu6", nn.ReLU()),
            ("drop2", nn.Dropout(dropout)),
            ("fc2", nn.Linear(hidden, hidden)), ("relu7", nn.ReLU()),
            ("output", nn.Linear(hidden, self.num_classes)),
        ]))

    def forward(self, x):
        return self.classifier(self.features(x))


class VGGSmall(_Described):
    """VGG-style: blocks of two 3x3 conv + ReLU, each followed by 2x2 max-pooling; no BatchNorm."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, widths=(32, 64, 128), hidden=256):
        super().__init__(input_shape, num_classes)
        layers: list[tuple[str, nn.Module]] = []
        c = self.input_shape[0]
        for b, w in enumerate(widths, 1):
            for i in (1, 2):
                layers += [(f"conv{b}_{i}", nn.Conv2d(c, w, 3, padding=1)), (f"relu{b}_{i}", nn.ReLU())]
                c = w
            layers.append((f"pool{b}", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(_flat_dim(self.features, self.input_shape), hidden)
        self.relu_fc1 = nn.ReLU()
        self.output = nn.Linear(hidden, self.num_classes)

    def forward(self, x):
        return self.output(self.relu_fc1(self.fc1(self.flatten(self.features(x)))))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    Down-sampling is done by the stride of the first convolution (no pooling), with a 1x1
    strided convolution + BN on the shortcut, as in ResNet.
    """

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)), ("bn", nn.BatchNorm2d(cout))]))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(_Described):
    """ResNet-style: a 3x3 stem, three stages of basic blocks (strided down-sampling), BatchNorm,
    skip connections, global average pooling and a linear classifier."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, widths=(16, 32, 64), blocks=1):
        super().__init__(input_shape, num_classes)
        c = self.input_shape[0]
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(c, widths[0], 3, padding=1, bias=False)), ("bn", nn.BatchNorm2d(widths[0])),
            ("relu", nn.ReLU())]))
        stages = []
        cin = widths[0]
        for s, w in enumerate(widths, 1):
            blocks_s = [(f"block{b}", BasicBlock(cin if b == 1 else w, w, stride=1 if (s == 1 or b > 1) else 2))
                        for b in range(1, blocks + 1)]
            stages.append((f"stage{s}", nn.Sequential(OrderedDict(blocks_s))))
            cin = w
        self.stages = nn.Sequential(OrderedDict(stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(widths[-1], self.num_classes)

    def forward(self, x):
        return self.output(self.flatten(self.pool(self.stages(self.stem(x)))))


class LinearModel(_Described):
    """A linear classifier f(x) = W x + b (adebayo2018, section 5.3; grabska2020, Fig. 1)."""

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, bias=True):
        super().__init__(input_shape, num_classes)
        self.flatten = nn.Flatten()
        self.output = nn.Linear(int(torch.tensor(self.input_shape).prod()), self.num_classes, bias=bias)

    def forward(self, x):
        return self.output(self.flatten(x))


class SumPoolConv(_Described):
    """One 3x3 convolution, ReLU, and a sum over all positions (adebayo2018, section 5.3).

    ``l(x) = sum_ij relu(w * x)_ij``; one filter per class (one class in the paper's analysis).
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes=1, bias=False):
        super().__init__(input_shape, num_classes)
        self.conv = nn.Conv2d(self.input_shape[0], self.num_classes, 3, padding=1, bias=bias)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)).sum(dim=(2, 3))
