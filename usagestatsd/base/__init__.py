"""The file system, child processes, logging and sd_notify: below everything."""
