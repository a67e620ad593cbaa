"""Tools for looking at data and results: exploring a data set, comparing runs, calibration,
ten-crop testing and Grad-CAM / attention maps. They build on common/ (common/ never imports
them), and every stage's eval.py calls them, so a figure means the same in every stage."""
