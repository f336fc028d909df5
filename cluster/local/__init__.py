"""Ranks on this machine, torch-free: start N of them and wait (``ranks``); end them with their launcher
(``watchdog``)."""
