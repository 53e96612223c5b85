"""An unchanged Hugging Face Trainer, instrumented with sftreport: the four lines marked `# sftreport`.

Runs offline in seconds on a CPU: scikit-learn's digits, a small ViT built from its config.
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from sftreport.integrations.transformers import SFTReportCallback  # sftreport

digits = load_digits()
x = F.interpolate(torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1), size=16).repeat(1, 3, 1, 1)
y = torch.tensor(digits.target)
train = [{"pixel_values": x[i], "labels": y[i]} for i in range(1400)]
val = [{"pixel_values": x[i], "labels": y[i]} for i in range(1400, len(y))]

torch.manual_seed(0)
# your pretrained model with its new head: ViTForImageClassification.from_pretrained(checkpoint, num_labels=10)
config = ViTConfig(
    image_size=16,
    patch_size=4,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    num_labels=10,
)
model = ViTForImageClassification(config)


def accuracy(p):
    return {"accuracy": (np.argmax(p.predictions, axis=-1) == p.label_ids).mean()}


args = TrainingArguments(
    "vit-digits",
    num_train_epochs=2,
    learning_rate=5e-3,
    per_device_train_batch_size=32,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
)
trainer = Trainer(model, args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy)
head = ["classifier.weight", "classifier.bias"]  # sftreport: the parameters of the new head
report = SFTReportCallback(probe=(x[-128:], y[-128:]), val_data=val, new_params=head, out="vit.html")  # sftreport
trainer.add_callback(report)  # sftreport
trainer.train()
