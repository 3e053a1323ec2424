"""digit-pipeline: a DVC pipeline for Kaggle's Digit Recognizer (ingest, augment, tune, train, predict).

Importing the package changes nothing (a notebook's `import pipeline.paths` leaves sys.meta_path and stderr as they
were). Only an entry point, `python -m pipeline.<module>`, keeps TensorFlow's C++ log lines off stderr
(pipeline/lib/quiet.py) before the module imports Keras; DIGIT_VERBOSE=1 (or --verbose) keeps them."""

import sys

if sys.argv[:1] == ["-m"]:  # Python is locating the module of `python -m pipeline.<module>`: an entry point
    from pipeline.lib import quiet

    quiet.install()
