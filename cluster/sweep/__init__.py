"""Sweeps, torch-free: the record on disk (``manifest``), job arrays (``arrays``), the queue of a
``cluster=local`` sweep (``local_queue``), where every member stands (``status``), results (``report``)."""
