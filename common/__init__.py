"""Plumbing shared by every stage: data reading, built-in faces, seeding, devices,
checkpoints, metrics and plots. Nothing here is part of a lesson; the lessons live in
each stage's train.py and model.py."""
