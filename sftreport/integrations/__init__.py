"""Integrations: the Recorder driven by a training framework's own hooks, with the same run directory and
report as `sftreport run`. Each is an optional extra (`pip install 'sftreport[lightning]'`); neither the core
install nor the render stage imports them."""
