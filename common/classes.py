"""Class-name tables and preprocessing constants, in one place.

The orders differ between datasets, so every reader maps to the table here and never to
alphabetical order (an image-folder copy of FER2013 sorted by name would put "fear" before
"happy" and silently shuffle the labels).
"""

# FER2013 label order: the integers 0-6 in fer2013.csv / icml_face_data.csv.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

# FER+ vote columns in fer2013new.csv (after "Usage" and "Image name").
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]

# Kaggle AffectNet folder / labels.csv names (8 classes: FER2013's 7 plus contempt).
AFFECTNET_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]

# How images are fed to a network trained on each kind of data. A checkpoint stores the spec it
# was trained with, so evaluation and the deploy tools preprocess exactly as training did.
# FER2013 mean/std: 131.0 +- 64.3 on a 0-255 scale (the data-exploration notebook of the source write-ups).
PREPROCESSING = {
    "fer2013": {"size": 48, "channels": 1, "mean": [131.0 / 255], "std": [64.3 / 255]},
    # ImageNet statistics are the usual choice for colour faces trained from scratch too.
    "affectnet": {"size": 96, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}

SPLITS = ["train", "val", "test"]
