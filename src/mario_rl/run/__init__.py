"""Running a training job, whatever the algorithm: the run directory, logging, progress, signals,
the non-finite guard, checkpoint schedule and retention, and evaluation in a side process."""
