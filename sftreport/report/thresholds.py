"""Every threshold the report judges by, in one place: the findings apply them, the charts draw them and
the templates read them, so a rule, its picture and its wording can never disagree.

Each is documented where it is used: findings.py names the rule, and the report states the threshold in
the finding's evidence.
"""

from __future__ import annotations

# accuracy
ACC_CHANGE = 0.005  # accuracy changes smaller than half a point count as unchanged
PEAK_DROP = 0.05  # the last epoch 5 points below the best: the run lost what it had gained

# forgetting of the source task (the backbone with its pretrained head kept aside)
FORGETTING_DROP = 0.05  # source accuracy more than 5 points below epoch 0's: the run forgot part of it

# losses
OVERFIT_RISE = 0.05  # validation loss at the end at least 5% above its minimum ...
OVERFIT_TRAIN_FALL = 0.01  # ... while training loss fell at least 1% more after that minimum
VAL_LOSS_RISE = 0.5  # validation loss at the end 50% above the pretrained model's

# weights and gradients
UPDATE_RATIO_BAND = (1e-4, 1e-2)  # healthy ‖update‖/‖W‖ of one optimizer step ...
UPDATE_RATIO_TARGET = 1e-3  # ... around the usual target
FAR_FACTOR = 10.0  # an update-to-weight ratio 10× outside the band is "far" from it
OVERWRITTEN = 1.0  # a pretrained layer that moved more than its own norm has lost its pretrained weights
EXPLODE_FACTOR = 10.0  # model gradient norm ≥ 10× its smallest earlier value
VANISHED = 1e-12  # a trainable layer whose gradient norm stays below this got no gradient

# activations
DEAD_GROWTH = 0.05  # dead-channel fraction up by at least 5 points between first and last epoch

# comparing runs (compare_findings.py)
COMPARE_ACC_SAME = 0.01  # final validation accuracies within 1 point count as the same; further apart, a difference
COMPARE_CHANGE_FACTOR = 2.0  # "changed the backbone N× less": the other run's backbone change at least 2× this one's
COMPARE_CKA_GAP = 0.2  # a layer's CKA to the pretrained model 0.2 lower in one run than another: its features drifted

# the diff of two checkpoints (report/diff.py)
DIFF_LOW_RANK_ENERGY = 0.9  # a weight matrix's change with 90 % of its energy in its top directions is low-rank ...
DIFF_LOW_RANK_MIN = 32  # ... when the matrix has room for more than 32 directions (fewer hold 90 % in 8 trivially)


def band_text() -> str:
    """The update-ratio band as the report writes it, e.g. '1e-04 … 1e-02'."""
    lo, hi = UPDATE_RATIO_BAND
    return f"{lo:g} … {hi:g}"


# segmentation and detection (findings_dense.py)
WEAK_CLASS = 0.5  # a class whose IoU or AP after fine-tuning is below half the mean over classes lags behind
CLASS_FELL = 0.05  # a class whose IoU or AP fell by more than 0.05 since the first evaluation lost ground
CONFUSED_SHARE = 0.05  # a segmenter labelling 5 % or more of a class's pixels as one other class confuses them
RANKED_FROM = 0.1  # below a mean IoU or AP of 0.1 the model has learned too little for one class to lag behind
LOOSE_BOXES = 0.5  # mAP@[.5:.95] below half of mAP@.5: objects are found but their boxes are loose ...
LOOSE_FROM = 0.3  # ... once mAP@.5 is at least 0.3 (before that, nothing is found well enough to judge boxes)
