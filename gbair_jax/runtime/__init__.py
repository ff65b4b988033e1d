"""Runtime helpers beside the stages: device mesh, processes, run-directory file I/O."""
