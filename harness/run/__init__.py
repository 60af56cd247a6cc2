"""Running specs: the suite runner, one job directory per run, worker processes, launch, meters, environment."""
