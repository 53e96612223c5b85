"""Your own training loop, instrumented with sftreport: the five lines marked `# sftreport`.

Runs offline in well under a minute on a CPU: scikit-learn's digits, a torchvision ResNet-18.
"""

import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

from sftreport import Recorder  # sftreport

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 2, 2)  # 3×16×16
y = torch.tensor(digits.target)
train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1400:], y[1400:]), batch_size=256)

torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)  # your pretrained model, with its new head
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

rec = Recorder(model, probe=(x[1400:1528], y[1400:1528]), val_data=val, run_dir="runs/own-loop")  # sftreport
for epoch in range(2):
    model.train()
    for xb, yb in train:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.step(loss, logits, yb)  # sftreport
    rec.epoch_end()  # sftreport
rec.finish(out="own-loop.html")  # sftreport
