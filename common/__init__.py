"""Plumbing shared by the stages. Nothing here is part of a lesson; the lessons live in each
stage's train.py and model.py. The imports run one way: each module imports only modules
listed above it (tests/test_imports.py checks it):

    facedata.py       class tables, errors, FaceData, split rules, image decoding, parse cache
    fer2013.py, ferplus.py, affectnet.py, affectnet_yolo.py, builtin_faces.py
                      the readers; each imports only facedata.py
    runtime.py        repo paths, seeding, devices, loading a stage's own model.py and eval.py
    data.py           load_data() picks a reader; the eval transform and the Dataset
    checkpoint.py     atomic writes, checkpoints, the shipped weights, metrics.csv
    metrics.py        accuracy, macro-F1, the confusion matrix
    plots.py          training curves and confusion-matrix PNGs
    runfolder.py      the run folder, locked for one run and never silently replaced
    guard.py          checked flags, --resume, stopping on Ctrl-C or a diverged loss
    flags.py          the flags every stage's train.py shares, added in one call
    tracking.py       optional Weights & Biases logging
    run.py            a run's start, data, resume and reports: what main() calls around the recipe

The tools for looking at data and results are in analysis/, which builds on this package.
"""
