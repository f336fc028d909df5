"""What each rank runs; the only part of the library that imports torch: the process group and device
mesh, the stop vote, the supervisor of the stop-save-requeue protocol, checkpoints, RNG state."""
