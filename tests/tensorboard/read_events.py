#!/usr/bin/env python3
"""Reads a TensorBoard log directory with TensorBoard's own loader and prints
`tag step value` lines, so the C++ tests can check what TensorBoard itself sees."""
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError:
    sys.exit("read_events.py: the PyPI package 'tensorboard' is missing: pip install tensorboard "
             "(scripts/install_deps.sh installs it)")

acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
for tag in sorted(acc.Tags()["scalars"]):
    for event in acc.Scalars(tag):
        print(f"{tag} {event.step} {event.value!r}")
