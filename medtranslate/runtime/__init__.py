"""Where and how work runs: device, precision, several processes, the folder-command runner."""
