"""digit-pipeline: a DVC pipeline for Kaggle's Digit Recognizer (ingest, augment, tune, train, predict).

Importing the package changes nothing (a notebook's `import pipeline.paths` leaves sys.meta_path, stderr and the
environment as they were). Only an entry point, `python -m pipeline.<module>`, keeps TensorFlow's C++ log lines off
stderr (pipeline/lib/quiet.py) before the module imports Keras (DIGIT_VERBOSE=1 or --verbose keeps them), and sets
matplotlib's backend to Agg (MPLBACKEND, inherited by its worker processes) before anything imports matplotlib: the
caller's backend (a notebook kernel's `module://matplotlib_inline.backend_inline`, a matplotlibrc's) is never
needed for the PNGs the pipeline writes, and `import keras` fails on one that cannot be loaded."""

import os
import sys

if sys.argv[:1] == ["-m"]:  # Python is locating the module of `python -m pipeline.<module>`: an entry point
    from pipeline.lib import quiet

    os.environ["MPLBACKEND"] = "agg"
    quiet.install()
