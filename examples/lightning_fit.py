"""An unchanged LightningModule and Trainer, instrumented with sftreport: the four lines marked `# sftreport`.

Runs offline in well under a minute on a CPU: scikit-learn's digits, a torchvision ResNet-18.
"""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

from sftreport.integrations.lightning import SFTReport  # sftreport

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1).repeat(1, 3, 2, 2)  # 3×16×16
y = torch.tensor(digits.target)
train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1400:], y[1400:]), batch_size=256)


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)  # your pretrained model, with its new head

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        xb, yb = batch
        return F.cross_entropy(self(xb), yb)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


torch.manual_seed(0)
probe = (x[1400:1528], y[1400:1528])  # sftreport: a fixed batch the probes look at every epoch
report = SFTReport(probe=probe, val_data=val, run_dir="runs/lightning", out="lightning.html")  # sftreport
trainer = pl.Trainer(max_epochs=2, callbacks=[report], logger=False, enable_checkpointing=False)  # sftreport
trainer.fit(Classifier(), train)
