"""The library under the stages and tools: competition CSVs, models, fitting, TTA, ensembles, files, plots and
progress. `python -m pipeline.lib.submission_file FILE` checks a submission; nothing else here is a command."""
